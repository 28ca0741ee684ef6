"""Sample-side metrics of a collapse study. Owns: what "diversity" and "tail" mean, exactly.

Pure functions of bytes; no torch, no files. Definitions (all computed on one corpus; the
study compares corpora of the same size, since distinct-n and tail survival grow with size):

- words: maximal runs of ASCII letters with inner apostrophes (`[A-Za-z]+('[A-Za-z]+)*`),
  lowercased. A byte-level model's invented words count as words too.
- byte_entropy, word_entropy: Shannon entropy in bits of the unigram distribution of bytes
  (resp. words), H = -sum p log2 p with p = count / total; 0 for an empty corpus.
- distinct_n (n = 1..4): distinct word n-grams / word n-gram positions (Li et al. 2016);
  0 when the corpus has fewer than n words.
- rep8: the fraction of word 8-gram positions whose 8-gram already occurred earlier in the
  corpus, i.e. 1 - distinct_8 (0 with fewer than 8 words). Human text is near 0; a model
  stuck in a loop is near 1.
- the rare tail of the real corpus (`Reference`): order the real corpus's word types by
  (count ascending, sha256 of the word ascending: a fixed pseudo-random tie-break, so equally
  rare words are not picked alphabetically) and take the longest prefix whose counts sum to
  at most 10% of the real word tokens. Same for byte values. Then
  tail_types: the fraction of those tail word types that occur at least once in the sample;
  tail_mass: the fraction of the sample's word tokens that are tail words (about 0.10 for
  the real corpus itself, by construction);
  tail_bytes_mass: the fraction of the sample's bytes whose value is in the byte tail.
- nonwords: the fraction of the sample's word tokens that never occur in the real corpus.

Not covered: model-side measures (val_bpb comes from the sealed evaluator).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

WORD = re.compile(rb"[A-Za-z]+(?:'[A-Za-z]+)*")
TAIL_FRACTION = 0.10
DISTINCT_NS = (1, 2, 3, 4)
REPEAT_N = 8
K = TypeVar("K", bound=Hashable)


def words(data: bytes) -> list[bytes]:
    """The corpus's words, lowercased (see the module doc)."""
    return [w.lower() for w in WORD.findall(data)]


def entropy(counts: Iterable[int]) -> float:
    """Shannon entropy in bits of the distribution given by `counts` (0 when empty)."""
    values = [c for c in counts if c > 0]
    total = sum(values)
    if total == 0:
        return 0.0
    return max(0.0, -sum(c / total * math.log2(c / total) for c in values))


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[Hashable], n: int) -> float:
    """Distinct n-grams / n-gram positions; 0 when there are none."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(tokens: Sequence[Hashable], n: int = REPEAT_N) -> float:
    """Fraction of n-gram positions that repeat an n-gram seen earlier (1 - distinct_n)."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _tie_key(item: Hashable) -> str:
    raw = item if isinstance(item, bytes) else repr(item).encode()
    return hashlib.sha256(raw).hexdigest()


def rare_tail(counts: Mapping[K, int], fraction: float = TAIL_FRACTION) -> frozenset[K]:
    """The rarest types holding at most `fraction` of the mass (see the module doc)."""
    budget = fraction * sum(counts.values())
    tail: set[K] = set()
    mass = 0
    for item, count in sorted(counts.items(), key=lambda kv: (kv[1], _tie_key(kv[0]))):
        if mass + count > budget:
            break
        tail.add(item)
        mass += count
    return frozenset(tail)


@dataclass(frozen=True)
class Reference:
    """What the samples are compared with: the real corpus's vocabulary and rare tails."""

    vocabulary: frozenset[bytes]
    tail_words: frozenset[bytes]
    tail_bytes: frozenset[int]

    @classmethod
    def of(cls, real: bytes, fraction: float = TAIL_FRACTION) -> Reference:
        word_counts = Counter(words(real))
        return cls(
            frozenset(word_counts),
            rare_tail(word_counts, fraction),
            rare_tail(Counter(real), fraction),
        )


def sample_metrics(sample: bytes, ref: Reference) -> dict[str, float]:
    """Every sample-side metric of `sample` against the real corpus `ref` (module doc)."""
    toks = words(sample)
    byte_counts = Counter(sample)
    out = {
        "byte_entropy": entropy(byte_counts.values()),
        "word_entropy": entropy(Counter(toks).values()),
    }
    for n in DISTINCT_NS:
        out[f"distinct_{n}"] = distinct_n(toks, n)
    out["rep8"] = repetition(toks, REPEAT_N)
    present = set(toks)
    out["tail_types"] = (
        len(ref.tail_words & present) / len(ref.tail_words) if ref.tail_words else 0.0
    )
    out["tail_mass"] = sum(1 for w in toks if w in ref.tail_words) / len(toks) if toks else 0.0
    in_tail = sum(byte_counts[b] for b in ref.tail_bytes)
    out["tail_bytes_mass"] = in_tail / len(sample) if sample else 0.0
    out["nonwords"] = sum(1 for w in toks if w not in ref.vocabulary) / len(toks) if toks else 0.0
    out["words"] = float(len(toks))
    return out
