"""Build hook (all metadata is in pyproject.toml): ship the top-level `registry/` and `specs/`.

Layout, and why: the model registry entries and example specs stay at the repository's top
level, where the README points (`vseam run specs/quickstart.yaml`, "put a file in
registry/") and where they are edited. A wheel build copies them into the package as
`vseam_run/_shipped/registry/` and `vseam_run/_shipped/specs/`, so `pip install .` (not
editable) ships them; `vseam_run.shipped.shipped_dir` reads the copy when it exists and the
top-level folders otherwise (an editable install, or a source checkout). One source of truth,
no duplicated files in git, no symlinks.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("registry", "specs")


class BuildPyWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the top-level folders directly
        for kind in SHIPPED:
            target = Path(self.build_lib) / "vseam_run" / "_shipped" / kind
            self.mkpath(str(target))
            for src in sorted((ROOT / kind).glob("*.yaml")):
                self.copy_file(str(src), str(target / src.name))


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
