"""Helpers the commands share: flags generated from the options models, name and number lists,
the SSH and signing options."""

from __future__ import annotations

import functools
import typing

import click

from edgetl.adapt.options import flag as flag_of


def _click_type(annotation):
    """click's type for a field: a Literal's values as choices, int and float as such, the rest str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice(args)
    if args and typing.get_origin(annotation) is not typing.Literal:  # X | None
        return _click_type(args[0])
    return annotation if annotation in (int, float) else str


def _model_option(name: str, field, with_defaults: bool):
    """One flag for a field of an options model: its name, type, help (the field's description, with
    its default) and, with ``with_defaults``, the default; a True-default bool becomes ``--no-<name>``,
    a ``bool | None`` (unset: decided later) ``--<name>/--no-<name>``, and a field with a
    ``negative_flag`` value gets ``--no-<name>`` as a shorthand for that value."""
    default = field.get_default(call_default_factory=True)
    spelled = (field.json_schema_extra or {}).get("flag", flag_of(name))  # --from, --task-head: a name of its own
    if field.annotation == bool | None:  # unset: the code decides (e.g. --channels-last: on for CUDA)
        return click.option(f"{flag_of(name)}/{flag_of('no_' + name)}", name, default=None, help=field.description)
    if typing.get_origin(field.annotation) is dict:  # repeatable NAME=VALUE: --task-head colour=c.csv
        return click.option(spelled, name, multiple=True, metavar="NAME=VALUE", callback=_pairs, help=field.description)
    if field.annotation is bool:
        flag, value = (flag_of(f"no_{name}"), False) if default else (flag_of(name), True)
        # the description says what the option does when on; next to --no-<name> that reads backwards
        shown = f"Turns off (on by default): {field.description}" if default else field.description
        return click.option(flag, name, is_flag=True, flag_value=value, default=default if with_defaults else None,
                            help=shown)
    shown = f"  [default: {default}]" if default is not None else ""
    main = click.option(spelled, name, type=_click_type(field.annotation), default=default if with_defaults else None,
                        help=f"{field.description}{shown}")
    negative = (field.json_schema_extra or {}).get("negative_flag")
    if negative is None:
        return main
    # ``--no-<name>`` sets the same parameter to one value: the flag of the option's former bool form.
    alias = click.option(flag_of(f"no_{name}"), name, flag_value=negative, help=f"Same as {flag_of(name)} {negative}.")
    return lambda f: alias(main(f))


def model_options(*models, with_defaults: bool):
    """The flags of the options models' fields, in field order. Without ``with_defaults`` an option not
    given is None (deploy: the config file's value, else the model's default, applies)."""
    def decorate(f):
        fields = [(name, field) for model in models for name, field in model.model_fields.items()]
        for name, field in reversed(fields):
            f = _model_option(name, field, with_defaults)(f)
        return f

    return decorate


def _take_fields(params: dict, model) -> dict:
    """Pop ``model``'s fields out of the command's parameters, leaving out options not given (None)."""
    return {name: value for name in model.model_fields if (value := params.pop(name)) is not None}


def _pairs(ctx, param, values: tuple[str, ...]) -> dict[str, str] | None:
    """A repeatable NAME=VALUE option as a dict (None when not given: the default applies)."""
    from edgetl.errors import ConfigError

    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise ConfigError(f"{param.opts[0]} {value!r}: expected NAME=VALUE, e.g. {param.opts[0]} colour=colour.csv")
        if name.strip() in pairs:
            raise ConfigError(f"{param.opts[0]} {name.strip()!r} is given twice")
        pairs[name.strip()] = rest.strip()
    return pairs or None


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _joined(ctx, param, values: tuple[str, ...]) -> str | None:
    """A repeatable comma-list option: ``-t a -t b,c`` is ``a,b,c`` (never only the last one)."""
    return ",".join(values) if values else None


def _int_list(option: str, text: str) -> list[int]:
    from edgetl.errors import ConfigError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated integers, e.g. {option} 1,8") from None


def _remote_options(f):
    """Options of every command that reaches a device over SSH."""
    f = click.option("--allow-rollback", is_flag=True, help="Install a bundle whose release is lower than the one "
                     "the device runs (refused otherwise).")(f)
    f = click.option("--connect-timeout", default=10, show_default=True, help="Seconds to wait for the SSH connection.")(f)
    f = click.option("--install", is_flag=True, help='pip install "edgetl[<runtime>]" on the device first (with the '
                     "python next to --remote-edgetl, else python3).")(f)
    f = click.option("--ssh-option", "-o", "ssh_options", multiple=True, envvar="EDGETL_SSH_OPTIONS", metavar="KEY=VALUE",
                     help="Extra `ssh -o` option, repeatable, e.g. -o IdentityFile=~/.ssh/pi -o ProxyJump=gateway "
                     "(env EDGETL_SSH_OPTIONS). ~/.ssh/config applies as usual.")(f)
    f = click.option("--remote-edgetl", default="edgetl", show_default=True, envvar="EDGETL_REMOTE_EDGETL",
                     metavar="COMMAND", help="edgetl on the device, e.g. /home/pi/venv/bin/edgetl when it lives in a "
                     "venv (env EDGETL_REMOTE_EDGETL).")(f)
    return f


def _trust_option(f):
    """--allow-unsigned for every command that opens a bundle: sets the opt-out for the whole command."""

    @functools.wraps(f)
    def wrapper(*args, allow_unsigned, **kwargs):
        from edgetl.bundle.signing import allowing_unsigned

        with allowing_unsigned(allow_unsigned):
            return f(*args, **kwargs)

    return click.option("--allow-unsigned", is_flag=True, envvar="EDGETL_ALLOW_UNSIGNED",
                        help="Accept unsigned bundles although trusted keys are configured (env "
                        "EDGETL_ALLOW_UNSIGNED=1). A bad signature or an unknown key is refused always.")(wrapper)
