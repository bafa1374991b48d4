"""The demo model zoo: built offline, deterministically, from installed packages.

``build_zoo(repo)`` builds every recipe that is missing or out of date into a
:class:`~edgecloud.repository.ModelRepository`; a model already built by the
same recipe revision is left alone (the cache), whatever versions were
added after it: re-running ``build_zoo`` leaves the repository byte for byte
as it was. Building needs the ``train``
extra (torch, scikit-learn, transformers, the packages carrying the weights).

Every zoo version carries its ``samples.npz`` (:mod:`edgecloud.samples`), the
data the product's commands run it on, so nothing outside the zoo and the
demo imports this package: digits-small/large the validation split with its
labels, minilm the tokenized demo sentences, vad a request of speech and
noise chunks, resnet18-like a few seeded images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, EdgecloudError
from ..repository import ModelRepository, ModelVersion
from .digits import DIGITS_LARGE, DIGITS_SMALL
from .minilm import MINILM
from .recipe import Built, Progress, Recipe
from .resnet import RESNET18_LIKE
from .vad import VAD

__all__ = ["RECIPES", "BuildResult", "Built", "Progress", "Recipe", "build_zoo", "up_to_date"]

RECIPES: dict[str, Recipe] = {
    r.name: r for r in (DIGITS_SMALL, DIGITS_LARGE, MINILM, VAD, RESNET18_LIKE)
}


@dataclass(frozen=True, slots=True)
class BuildResult:
    name: str
    version: ModelVersion
    cached: bool


def up_to_date(repo: ModelRepository, recipe: Recipe) -> ModelVersion | None:
    """The version built by this recipe revision, if the repository holds a sound one.

    Any version on disk counts, newest first, not only the newest served one:
    versions added after the build (``compress``'s, say) must not make the
    recipe's own look missing, or a re-run would add a copy of it as the new
    latest version and stop serving theirs. Its files must match the sha256
    recorded in its ``version.json``; a damaged one is rebuilt.
    """
    if recipe.name not in repo.model_names():
        return None
    try:
        numbers = repo.versions(recipe.name)
        for number in reversed(numbers):
            entry = repo.get(recipe.name, number, served_only=False, verify=False)
            if entry.metadata.get("recipe") == recipe.fingerprint:
                entry.verify()
                return entry
    except EdgecloudError:
        return None
    return None


def _not_the_zoos(repo: ModelRepository, name: str, *, force: bool) -> str | None:
    """Why model ``name`` in ``repo`` is not the zoo's to rebuild, or ``None`` if it is.

    The zoo's when some readable version carries the zoo's ``recipe`` metadata (or the
    repository has no such model). Versions that cannot be read prove nothing: a
    model whose readable versions are all someone else's is theirs, however many of
    its version directories are broken; one with no readable version at all is taken
    over only with ``force``.
    """
    if name not in repo.model_names():
        return None
    try:
        numbers = repo.versions(name)
    except EdgecloudError:
        numbers = []
    readable = []
    for number in numbers:
        try:
            readable.append(repo.get(name, number, served_only=False, verify=False))
        except EdgecloudError:
            continue  # a damaged version: its neighbours decide whose model it is
    if any("recipe" in entry.metadata for entry in readable):
        return None
    if readable:
        return "is not built by the zoo (your own model?)"
    if force:
        return None
    return "has no readable version (damaged? pass --force to rebuild it from the zoo)"


def build_zoo(
    repo: ModelRepository,
    only: Sequence[str] | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], Progress] | None = None,
) -> list[BuildResult]:
    """Build the named recipes (all by default) into ``repo``.

    ``progress(name)`` returns the callback that recipe reports to.
    """
    names = list(only) if only else list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown zoo model(s) {unknown}; known: {', '.join(RECIPES)}")
    theirs = {n: why for n in names if (why := _not_the_zoos(repo, n, force=force))}
    if theirs:  # a zoo version would be added to it and its config rewritten
        said = "; ".join(f"{name!r} in {repo.root} {why}" for name, why in theirs.items())
        raise ConfigError(
            f"{said}; nothing built: build the zoo into another --repo, or leave out those names"
        )
    results = []
    for name in names:
        recipe = RECIPES[name]
        report = progress(name) if progress else (lambda fraction, text: None)
        cached = None if force else up_to_date(repo, recipe)
        if cached is not None:
            report(1.0, "cached")
            results.append(BuildResult(name, cached, cached=True))
            continue
        results.append(BuildResult(name, _build_one(repo, recipe, report), cached=False))
    return results


def _build_one(repo: ModelRepository, recipe: Recipe, report: Progress) -> ModelVersion:
    with tempfile.TemporaryDirectory(prefix=f"edgecloud-zoo-{recipe.name}-") as tmp:
        built = recipe.build(Path(tmp), report)
        entry = repo.add_version(
            recipe.name,
            built.model_path,
            config=built.config,
            extra_files=dict(built.extra_files),
            metadata={"recipe": recipe.fingerprint, **built.metadata},
            samples=built.samples,
        )
    report(1.0, "built")
    return entry
