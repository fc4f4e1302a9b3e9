"""Writing to a store: adding photos (resumable; a photo whose id is taken is kept under a new id),
importing descriptors computed elsewhere, the local features that verify matches and the DBA set.
Making a store and building it from a dataset is :mod:`landmark.pipeline.stores`."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data import Manifest, read_photos
from ..data.manifests import ImageRecord
from ..distributed import extract_distributed
from ..features.extract import ExtractionResult, Failure
from ..features.local import LocalFeatures, extract_many
from ..features.pipeline import (
    DESCRIPTOR_EXTRA,
    WhitenedExtractor,
)
from ..index import StoreError
from ..index.bulk import bulk_import
from ..index.local import LOCAL_DIR, LocalStore
from ..recognition.setup import priors_stale, record_groups
from ..retrieval.augment import AugmentReport, augment_status, augment_store
from ..retrieval.pairs import stored_pair_inliers
from ..utils.progress import progress_bar
from .context import StoreContext
from .placement import Placement, content_or_none, place
from .results import BuildReport, PhotoOutcome

log = logging.getLogger(__name__)


class Building:
    """Writes to a store: photos (global descriptors, object prior, local features), imported descriptors."""

    def __init__(self, ctx: StoreContext):
        self.ctx = ctx

    def add_manifest(
        self,
        manifest: Manifest,
        split: str | None = None,
        *,
        progress: bool | None = None,
        report: BuildReport | None = None,
        itemise: bool = False,
    ) -> BuildReport:
        """Extract and add the photos of ``manifest`` not yet in the store (resumable).

        A photo is already in the store when a stored photo has its id and its content (see
        :func:`_place`); one whose id names another stored photo is added under a new id,
        ``{id}~{first 8 hex digits of its SHA-256}``, listed in ``report.renamed`` and logged: no photo
        is dropped for its name. Stored photos that lack local features (an add or build killed
        between the two writes) get them, counted in ``report.filled``. ``itemise``: also list what
        became of each photo in ``report.photos``."""
        report = report or BuildReport()
        split = split or manifest.name
        placed = place(self.ctx.store, manifest.records)
        todo = placed.todo
        report.skipped[split] = len(placed.records) - len(todo)
        report.failures += placed.failures
        work = self.ctx.store.root / "_work" / f"extract-{split}"
        if self.ctx.ray is not None:
            result = extract_distributed(
                self.ctx.store.config,
                todo,
                self.ctx.ray,
                cache_dir=work,
                progress=progress,
                description=f"extract {split} (ray)",
                store_root=self.ctx.store.root,
                expect_prior_source=self.ctx.prior_source if self.ctx.groups else None,
            )
        else:
            result = self.ctx.extractor.extract(todo, cache_dir=work, progress=progress, description=f"extract {split}")
        self.store_extracted(todo, result, split, contents=placed.contents)
        shutil.rmtree(work, ignore_errors=True)
        report.added[split] = len(result.ids)
        report.failures += result.failures
        done = set(result.ids)
        renamed = [r for r in placed.renamed if r.new_id in done]
        report.renamed += renamed
        if renamed:
            log.warning(
                "%s: %d photo(s) kept under a new id, theirs being taken by another stored photo: %s%s",
                split,
                len(renamed),
                "; ".join(map(str, renamed[:3])),
                f"; and {len(renamed) - 3} more" if len(renamed) > 3 else "",
            )
        made: list[str] = []
        local_failures: list[Failure] = []
        if self.ctx.config.local.enabled:
            stored = set(self.ctx.store.get([r.id for r in placed.records]))
            local_failures = self.add_local(
                [r for r in placed.records if r.id in stored],
                progress=progress,
                description=f"local features {split}",
                made=made,
            )
            report.failures += local_failures
        filled = set(made) - done
        report.filled[split] = len(filled)
        if filled:
            log.info("%s: local features made for %d stored photo(s) that lacked them", split, len(filled))
        if itemise:
            report.photos += outcomes(manifest, placed, done, result.failures, filled, local_failures)
        self.keep_augmented(progress=progress)
        return report

    def store_extracted(
        self,
        records: Sequence[ImageRecord],
        result: ExtractionResult,
        split: str,
        *,
        contents: Mapping[str, str] | None = None,
    ) -> None:
        """Add ``result`` (the global extraction of ``records``, with its object prior) to the store in
        one commit under ``split``, with each photo's content hash (from ``contents`` where already
        computed, else read from its file). Local features are :meth:`add_local`'s."""
        by_id = {r.id: r for r in records}
        known = contents or {}
        self.ctx.store.add(
            result.ids,
            result.vectors,
            paths=[str(Path(by_id[i].path).resolve()) for i in result.ids],
            landmark_ids=[by_id[i].landmark_id for i in result.ids],
            split=split,
            sizes=result.sizes,
            extras={k: v for k, v in result.extras.items() if k != DESCRIPTOR_EXTRA},
            contents=[known.get(i) or content_or_none(by_id[i].path) for i in result.ids],
        )
        if result.extras and len(result.ids) and self.ctx.groups is not None:
            if not priors_stale(
                self.ctx.store, self.ctx.groups, self.ctx.prior_source
            ):  # else older photos' wait for a backfill
                record_groups(self.ctx.store, self.ctx.groups, self.ctx.prior_source)

    def add_local(
        self,
        records: Sequence[ImageRecord],
        *,
        progress: bool | None = None,
        description: str = "local features",
        replace: bool = True,
        made: list[str] | None = None,
    ) -> list[Failure]:
        """Extract and store local features of stored photos that lack them (resumable). Local
        features of other settings are replaced (all of them: the caller re-extracts every photo),
        unless ``replace`` is False: then that is a :class:`StoreError`. The ids whose features were
        stored are appended to ``made``."""
        extractor = self.ctx.local_extractor()
        local = self.ctx.local
        if local is None or local.signature != json.loads(json.dumps(extractor.signature)):
            if not replace and local is not None:
                raise StoreError(
                    f"the store's local features were extracted with other settings "
                    f"({local.signature}); rebuild them with `landmark index build`"
                )
            local = LocalStore.create(self.ctx.store.root / LOCAL_DIR, extractor.signature)
            self.ctx.set_local(local)
        present = local.present([r.id for r in records])
        todo = [r for r in records if r.id not in present]

        def sink(keys: list[str], features: list[LocalFeatures]) -> None:
            local.add(keys, features)
            if made is not None:
                made.extend(keys)

        return extract_many(extractor, todo, sink, progress=progress, description=description)

    def add_photos(
        self,
        photos: Sequence[str | Path],
        *,
        landmark_id: int | None = None,
        split: str = "user",
        name: str | None = None,
        progress: bool | None = None,
    ) -> BuildReport:
        """Add photos (ids: their file names, see :func:`~landmark.data.read_photos`) under ``split``.
        One whose id names another stored photo is kept under a new id (``report.renamed``); one
        already stored (same id, same content) is skipped (see :meth:`add_manifest`). ``report.photos``
        says what became of each photo."""
        manifest = read_photos(photos)
        manifest = Manifest(
            manifest.name, manifest.root, [ImageRecord(r.id, r.path, landmark_id) for r in manifest.records]
        )
        if landmark_id is not None and name:
            self.ctx.store.set_label_names({landmark_id: name})
        return self.add_manifest(manifest, split=split, progress=progress, itemise=True)

    def import_vectors(
        self,
        vectors: np.ndarray,
        ids: Sequence[str],
        *,
        landmark_ids: Sequence[int | None] | None = None,
        paths: Sequence[str | None] | None = None,
        split: str = "index",
        batch_size: int = 100_000,
        progress: bool | None = None,
    ) -> BuildReport:
        """Add descriptors computed elsewhere (a Spark or Ray job running the store's network) under
        ``split``, ``batch_size`` rows a commit: a killed import resumes, ids already stored are
        skipped (``report.skipped``). The first import into an empty compressed store of at least
        ``index.train_min`` rows is a bulk load (:func:`landmark.index.bulk.bulk_import`: trained on a
        sample, filled ``batch_size`` rows at a time, one commit). Rows are the network's unit-norm
        descriptors, or already in
        the store's space (``store.dim``); a store that whitens applies its whitening to the
        former. Imported photos have no local features and no object prior (``paths`` lets
        :meth:`ensure_extras` compute the latter later)."""
        n = len(ids)
        if vectors.ndim != 2 or len(vectors) != n:
            raise StoreError(f"expected {n} vector rows (one per id), got shape {vectors.shape}")
        if len(set(ids)) != n:
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise StoreError(f"the ids repeat (e.g. {dup!r}): each imported row needs its own id")
        ex = self.ctx.extractor
        whitening = ex.whitening if isinstance(ex, WhitenedExtractor) and vectors.shape[1] == ex.base.dim else None
        whiten = whitening is not None
        if vectors.shape[1] != self.ctx.store.dim and not whiten:
            raise StoreError(f"the store holds {self.ctx.store.dim}-d vectors; these are {vectors.shape[1]}-d")
        report = BuildReport(added={split: 0}, skipped={split: 0})
        ic = self.ctx.store.config.index
        if not len(self.ctx.store) and ic.kind != "flat" and n >= ic.train_min:  # a large first import: shard by shard
            report.added[split] = bulk_import(
                self.ctx.store,
                vectors,
                list(ids),
                landmark_ids=landmark_ids,
                paths=paths,
                split=split,
                shard_size=batch_size,
                progress=progress,
                transform=whitening.apply if whitening is not None else None,
            )
            return report
        with progress_bar(f"import {split}", total=n, enabled=progress) as bar:
            for lo in range(0, n, batch_size):
                part = slice(lo, min(n, lo + batch_size))
                keys = list(ids[part])
                rows = np.ascontiguousarray(vectors[part], dtype=np.float32)
                norms = np.linalg.norm(rows, axis=1)
                if not np.allclose(norms, 1.0, atol=1e-3):
                    bad = int(np.argmax(np.abs(norms - 1.0)))
                    raise StoreError(
                        f"row {lo + bad} ({keys[bad]!r}) has norm {norms[bad]:.4f}: descriptors are L2-normalised rows"
                    )
                if whitening is not None:
                    rows = whitening.apply(rows)
                present = self.ctx.store.get(keys)
                keep = [j for j, k in enumerate(keys) if k not in present]
                self.ctx.store.add(
                    [keys[j] for j in keep],
                    rows[keep],
                    paths=[paths[lo + j] for j in keep] if paths is not None else None,
                    landmark_ids=[landmark_ids[lo + j] for j in keep] if landmark_ids is not None else None,
                    split=split,
                )
                report.added[split] += len(keep)
                report.skipped[split] += len(keys) - len(keep)
                bar.advance(len(keys))
        self.keep_augmented(progress=progress)
        return report

    def expand(
        self,
        *,
        restart: bool = False,
        limit: int | None = None,
        chunk: int = 1000,
        progress: bool | None = None,
    ) -> AugmentReport:
        """Database-side augmentation through the index (``landmark index expand``): each stored photo's
        DBA vector from its verified neighbours among the store's search results, committed into the
        store ``chunk`` photos at a time with an index of the store's kind, so that DBA / alpha-QE run on
        a large or compressed store without all-pairs products (:func:`landmark.retrieval.augment.augment_store`).
        Resumable (a killed run goes on where it stopped); ``limit`` augments at most so many this run;
        ``restart`` begins again. Photos added later are augmented when they are added."""
        ctx = self.ctx

        def pair_inliers(keys: Sequence[str], neighbours: Sequence[Sequence[str]]) -> np.ndarray:
            return stored_pair_inliers(ctx.verifier, keys, neighbours)

        return augment_store(
            ctx.store,
            ctx.config.expansion,
            ctx.recognition_config.k,
            chunk=chunk,
            limit=limit,
            restart=restart,
            pair_inliers=pair_inliers if ctx.has_local_features else None,
            min_inliers=ctx.config.rerank.verified_inliers,
            progress=progress,
        )

    def keep_augmented(self, *, progress: bool | None = None) -> AugmentReport | None:
        """After an add: a store whose augmented vectors were complete for the expansion in force
        augments its new photos from the index now (the photos augmented before keep their vectors);
        None where there was nothing to keep (no augmented vectors, made with other settings, or none new)."""
        ctx = self.ctx
        status = augment_status(
            ctx.store, ctx.config.expansion, ctx.recognition_config.k, ctx.config.rerank.verified_inliers
        )
        if status.state != "partial" or status.indexed == 0:
            return None
        return self.expand(progress=progress)

    def remove(self, ids: Sequence[str]) -> int:
        if self.ctx.local is not None:
            self.ctx.local.remove(ids)
        return self.ctx.store.remove(ids)


def outcomes(
    manifest: Manifest,
    placed: Placement,
    added: set[str],
    failures: Sequence[Failure],
    filled: set[str],
    local_failures: Sequence[Failure],
) -> list[PhotoOutcome]:
    """What :meth:`Building.add_manifest` did with each photo of ``manifest``, in its order: ``placed``
    where it went, ``added`` the ids stored now, ``failures`` the photos that could not be read,
    ``filled`` the stored ids whose local features were made now, ``local_failures`` those that got none."""
    unreadable = {f.id: f.reason for f in failures}
    no_local = {f.id: f.reason for f in local_failures}
    renamed = {r.new_id: r for r in placed.renamed}
    by_path: dict[str, PhotoOutcome] = {
        f.path: PhotoOutcome(f.path, f.id, "unreadable", f.reason) for f in placed.failures
    }
    for r in placed.records:
        path = str(r.path)
        if r.id in unreadable:
            by_path[path] = PhotoOutcome(path, r.id, "unreadable", unreadable[r.id])
            continue
        status = "added" if r.id in added else "filled" if r.id in filled else "present"
        notes = [f"its id {renamed[r.id].id!r} is taken by {renamed[r.id].reason}"] if r.id in renamed else []
        if r.id in no_local:
            notes.append(f"no local features: {no_local[r.id]}")
        by_path[path] = PhotoOutcome(path, r.id, status, "; ".join(notes))
    return [by_path[str(r.path)] for r in manifest.records if str(r.path) in by_path]
