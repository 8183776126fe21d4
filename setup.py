"""Build hook: the wheel carries the zoo's shipped Hub folders inside the package.

``model_cards/<tag>/`` at the repository root stays the source of truth (Hub folders, pushed as they
are); building a wheel copies every shipped folder to ``mislas_timm/model_cards/<tag>/`` in the build
tree, so an installed package loads its zoo tags offline (see ``mislas_timm.models.pretrained_tags``)
and nothing outside ``mislas_timm/`` is installed. An editable install reads ``model_cards/`` in place.
Everything else about the package is in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# What a shipped folder holds (mislas_timm.hub.HUB_FILES; not imported: the build must not need torch).
HUB_FILES = ('README.md', 'config.json', 'model.safetensors', 'metrics.json', 'reliability.png')


class BuildPyWithModelCards(build_py):
    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return  # the checkout's model_cards/ is found in place
        source = Path(__file__).resolve().parent / 'model_cards'
        target = Path(self.build_lib) / 'mislas_timm' / 'model_cards'
        if target.exists():
            shutil.rmtree(target)  # a stale build tree must not keep a folder that model_cards/ dropped
        for folder in sorted(source.iterdir()) if source.is_dir() else []:
            if not (folder / 'config.json').is_file():
                continue
            (target / folder.name).mkdir(parents=True)
            for name in HUB_FILES:
                if (folder / name).is_file():
                    shutil.copy2(folder / name, target / folder.name / name)


setup(cmdclass={'build_py': BuildPyWithModelCards})
