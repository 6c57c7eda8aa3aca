"""The benchmark registry: name -> loader of the benchmark's published files.

Adding a benchmark is one small module in :mod:`medsft_pipelines.eval.benchmarks` that calls
:func:`register`; every module of that package is imported on first use.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from medsft_pipelines.storage import ObjectStore

from .files import BenchmarkFiles, BenchmarkFormatError
from .items import BenchItem, Benchmark, Distribution, Family

#: A loader reads the published files of one split and yields canonical items.
Loader = Callable[[BenchmarkFiles, str], Iterable[BenchItem]]


@dataclass(frozen=True)
class BenchmarkInfo:
    """What the registry knows about one benchmark."""

    name: str
    """Registry name, as written in an EvalSpec (``medqa``, ``vqa-rad`` …)."""
    family: Family
    """Task family, for family means."""
    load: Loader
    """Reads one split from the benchmark's files."""
    description: str
    """One line: what it is and which published files it reads."""
    distribution: Distribution = "out"
    """Default in/out-of-distribution flag when the spec does not say (paper's split)."""


_REGISTRY: dict[str, BenchmarkInfo] = {}
_loaded = False


def register(info: BenchmarkInfo) -> BenchmarkInfo:
    """Add a benchmark; a second registration of a name is a programming error."""
    if info.name in _REGISTRY:
        raise ValueError(f"benchmark {info.name!r} is registered twice")
    _REGISTRY[info.name] = info
    return info


def _load_modules() -> None:
    global _loaded
    if not _loaded:
        from . import benchmarks

        for module in pkgutil.iter_modules(benchmarks.__path__):
            importlib.import_module(f"{benchmarks.__name__}.{module.name}")
        _loaded = True


def benchmark_names() -> list[str]:
    """Every registered benchmark name, sorted."""
    _load_modules()
    return sorted(_REGISTRY)


def get_benchmark(name: str) -> BenchmarkInfo:
    """The registry entry of ``name``; KeyError listing the known names otherwise."""
    _load_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown benchmark {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def load_benchmark(
    name: str,
    root: str | ObjectStore,
    split: str = "test",
    *,
    distribution: Distribution | None = None,
    max_items: int | None = None,
    check_images: bool = True,
) -> Benchmark:
    """Load one split of a benchmark from its folder (``s3://…``, ``file://…`` or a path).

    ``max_items`` keeps a deterministic subset spread over the whole benchmark (items with the
    smallest hash of their id), in the benchmark's order. With ``check_images`` every referenced
    image file must exist, so a missing one fails here, naming it, not hours into a run.
    """
    info = get_benchmark(name)
    files = BenchmarkFiles(name, root)
    items = list(info.load(files, split))
    if not items:
        raise BenchmarkFormatError(
            f"benchmark {name}: split {split!r} under {files.uri} has no items"
        )
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise BenchmarkFormatError(f"benchmark {name}: duplicate item ids in split {split!r}")
    if max_items is not None and max_items < len(items):
        keep = set(sorted(ids, key=_stable_hash)[:max_items])
        items = [item for item in items if item.id in keep]
    if check_images:
        files.check_images(ref for item in items for ref in item.images if isinstance(ref, str))
    return Benchmark(
        name=name,
        split=split,
        family=info.family,
        distribution=distribution or info.distribution,
        items=tuple(items),
        root=files.uri,
        files=files,
    )


def _stable_hash(item_id: str) -> str:
    return hashlib.sha1(item_id.encode()).hexdigest()
