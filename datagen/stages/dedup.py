"""Near-duplicate removal with MinHash LSH; the surviving twin is chosen deterministically.

Design — LSH banding as Beam steps, not one in-memory index under a single key:
1. each record's MinHash (datasketch) over word shingles of its normalized instruction is cut
   into b bands of r values (b, r: datasketch's MinHashLSH optimum for the threshold);
2. records are keyed by (band, hash of the band) and grouped, so only records sharing a band
   meet, and only one bucket at a time is held in memory;
3. within a bucket, candidate pairs are verified by the estimated Jaccard similarity (the share
   of equal MinHash values) against `threshold`;
4. each record's lowest-ranked verified twin is joined back to the record.

Survivor rule: a record is rejected as near_duplicate ("twin of <id>, jaccard≈0.91") when some
verified twin ranks lower; rank = (record id, hash of the whole record), so exact copies are
ordered too. Every decision depends only on the set of records, never on input order or Beam
bundling, and needs no iteration. In a chain A~B~C where A and C differ, C still goes when B
ranks below it, even though B itself goes (connected-component dedup would drop it as well).
Records whose instruction has no words, and referenced items (a seed's problem with its own answer:
templated problems differ in their numbers, not their words), are never twins. A bucket of k candidates costs up to
k² comparisons; comparing stops at a record's first twin, so copies are cheap.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from datasketch import MinHash, MinHashLSH

from datagen.config_loader import option
from datagen.record import Record
from datagen.stage import StageResult, StageCounters, route, run_stage
from datagen.filters.text import words

STAGE = "dedup"


@dataclass
class DedupConfig:
    threshold: float = option(0.8, "estimated Jaccard similarity at or above which two instructions are twins")
    num_perm: int = option(128, "MinHash permutations; more: a finer Jaccard estimate, bigger signatures")
    shingle_words: int = option(3, "words per shingle")
    seed: int = option(1, "MinHash permutation seed (all workers must agree)")


RankKey = tuple[str, str]


def rank_key(record: Record) -> RankKey:
    """Lowest survives: the record id first, then the whole record to order exact copies."""
    return record.id, hashlib.sha256(record.to_json().encode("utf-8")).hexdigest()[:16]


def shingles(text: str, k: int) -> set[str]:
    tokens = words(text)
    if len(tokens) < k:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + k]) for i in range(len(tokens) - k + 1)}


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives + negatives, as datasketch picks them."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def estimated_jaccard(sig_a: bytes, sig_b: bytes) -> float:
    return float(np.mean(np.frombuffer(sig_a, "<u4") == np.frombuffer(sig_b, "<u4")))


class BandKeys(beam.DoFn):
    """Record → ((band, band hash), (rank key, signature bytes)) for each band."""

    def __init__(self, cfg: DedupConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self) -> None:
        self._template = MinHash(self.cfg.num_perm, seed=self.cfg.seed)  # permutations, made once
        self.bands, self.rows = lsh_bands(self.cfg.threshold, self.cfg.num_perm)

    def signature(self, text: str) -> bytes | None:
        grams = shingles(text, self.cfg.shingle_words)
        if not grams:
            return None
        minhash = MinHash(self.cfg.num_perm, seed=self.cfg.seed, scheme=self._template.scheme,
                          permutations=self._template.permutations)
        minhash.update_batch([g.encode("utf-8") for g in sorted(grams)])
        return minhash.hashvalues.astype("<u4").tobytes()

    def process(self, record: Record):
        # A referenced item is a problem with its own answer: "Compute 17 × 6." and "Compute 17 × 8." share
        # most shingles but are different problems. They are never twins (exact copies share an id).
        sig = None if record.referenced else self.signature(record.instruction)
        if sig is None:
            return
        width = 4 * self.rows
        for band in range(self.bands):
            chunk = sig[band * width:(band + 1) * width]
            yield (band, hashlib.blake2b(chunk, digest_size=8).digest()), (rank_key(record), sig)


class LowerTwins(beam.DoFn):
    """A bucket → (rank key, (lowest twin's rank key, jaccard)) for members with a lower twin."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def process(self, bucket):
        _, members = bucket
        members = sorted(set(members))  # exact copies share key and signature: one entry
        for j in range(1, len(members)):
            key, sig = members[j]
            for lower_key, lower_sig in members[:j]:
                jaccard = estimated_jaccard(sig, lower_sig)
                if jaccard >= self.threshold:
                    yield key, (lower_key, jaccard)
                    break


class KeepOrDrop(beam.DoFn):
    """(rank key, {record: [...], twin: [...]}) → the record kept or rejected, counted."""

    def __init__(self, cfg: DedupConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self) -> None:
        self._counters = StageCounters(STAGE)
        bands, rows = lsh_bands(self.cfg.threshold, self.cfg.num_perm)
        self._params = {"threshold": self.cfg.threshold, "num_perm": self.cfg.num_perm,
                        "bands": bands, "rows": rows, "shingle_words": self.cfg.shingle_words}

    def process(self, element):
        _, group = element
        twin = min(group["twin"], default=None)
        for copy, record in enumerate(group["record"]):
            if twin is not None:
                (twin_id, _), jaccard = twin
                out = record.rejected(STAGE, "near_duplicate", f"twin of {twin_id}, jaccard≈{jaccard:.2f}")
            elif copy > 0:
                out = record.rejected(STAGE, "near_duplicate",
                                      f"twin of {record.id}, jaccard≈1.00 (exact copy)")
            else:
                out = record.with_lineage(STAGE, params=self._params)
            yield from route(STAGE, self._counters, [out])


class DedupStage(beam.PTransform):
    """Records → StageResult(kept, rejected as near_duplicate)."""

    def __init__(self, cfg: DedupConfig) -> None:
        super().__init__()
        if not 0 < cfg.threshold <= 1:
            raise ValueError(f"dedup.threshold must be in (0, 1], got {cfg.threshold}")
        self.cfg = cfg

    def expand(self, pcoll) -> StageResult:
        keyed = pcoll | "ByRank" >> beam.Map(lambda r: (rank_key(r), r))
        twins = (pcoll
                 | "BandKeys" >> beam.ParDo(BandKeys(self.cfg))
                 | "Buckets" >> beam.GroupByKey()
                 | "LowerTwins" >> beam.ParDo(LowerTwins(self.cfg.threshold))
                 | "LowestTwin" >> beam.CombinePerKey(min))
        joined = {"record": keyed, "twin": twins} | "Join" >> beam.CoGroupByKey()
        return run_stage(joined, "KeepOrDrop", KeepOrDrop(self.cfg))
