"""The fourth runtime (a plugin, tests/backends/plugin/) passes the conformance tests every runtime passes."""

from __future__ import annotations

import pytest

from tests.backends.conformance import BackendConformance, host_device
from tests.backends.plugin import install, registered
from tests.backends.plugin.ortwrap_backend import OrtWrapBackend


@pytest.fixture(scope="module")
def ortwrap_site(tmp_path_factory):
    site = install(tmp_path_factory.mktemp("site"))
    with registered(site):
        yield site


class TestOrtWrap(BackendConformance):
    runtime = "ortwrap"

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _installed(cls, ortwrap_site):
        return ortwrap_site

    def pytest_generate_tests(self, metafunc):
        # Tests are collected before the plugin is installed: its precisions and variants come from the class.
        if "precision" in metafunc.fixturenames:
            metafunc.parametrize("precision", OrtWrapBackend.precisions)
        if "variant" in metafunc.fixturenames:
            found = OrtWrapBackend().variants(host_device(OrtWrapBackend()))
            metafunc.parametrize("variant", found, ids=[v.label for v in found])
