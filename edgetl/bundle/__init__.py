"""Bundles: a self-checking package of one compiled model for one device, and shipping it there.

- ``format``: the archive layout and its safety checks (device side).
- ``manifest``: the one validated model of a bundle's manifest.json.
- ``signing``: Ed25519 signatures over the exact manifest bytes, and the trusted keys.
- ``create``: ``create_bundle(run, target)`` -> ``runs/<name>/bundles/<target>-<precision>.tar.gz`` (workstation).
- ``runner``: ``verify``, ``predict``, ``bench`` on the device: numpy, Pillow and the runtime only.
- ``ship``: copy, check and activate a bundle over the system ``ssh`` client.
- ``remote``: bench on one device or a fleet over SSH, results back into the run.

Nothing is imported here, so ``import edgetl.bundle.runner`` stays light on a device.
"""
