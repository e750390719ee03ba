"""PatternSet: same answers as naive per-pattern ``re`` search, on every backend, in bounded time."""

from __future__ import annotations

import random
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parser_samples import sample_lines

from watcher.matcher import MAX_LINE, PatternError, PatternSet, PatternSpec, available_backends, check_pattern

BACKENDS = available_backends()

REALISTIC = [
    PatternSpec("tfs-oom", "Resource exhausted: OOM when allocating"),
    PatternSpec("tfs-alloc", r"Allocation of \d+ exceeds \d+% of (free )?system memory", is_regex=True),
    PatternSpec("tfs-load-failed", r"Loading servable: \{name: \S+ version: \d+\} failed", is_regex=True),
    PatternSpec("tfs-no-versions", "No versions of servable"),
    PatternSpec("tfs-savedmodel", "Could not find SavedModel .pb or .pbtxt"),
    PatternSpec("tfs-metagraph", "Could not find meta graph def matching supplied tags"),
    PatternSpec("tfs-bad-alloc", "std::bad_alloc"),
    PatternSpec("tfs-loaded", r"Successfully loaded servable version \{name: ", is_regex=True),
    PatternSpec("nginx-timeout", "upstream timed out (110: Connection timed out)"),
    PatternSpec(
        "nginx-refused", r"connect\(\) failed \(111: Connection refused\) while connecting to upstream", is_regex=True
    ),
    PatternSpec("nginx-no-live", "no live upstreams while connecting to upstream"),
    PatternSpec("nginx-premature", "upstream prematurely closed connection"),
    PatternSpec("nginx-5xx", r'" 5\d\d \d+ "', is_regex=True),
    PatternSpec("gunicorn-sigkill", "was sent SIGKILL! Perhaps out of memory?"),
    PatternSpec("gunicorn-timeout", "worker timeout", ignore_case=True),
    PatternSpec("uvicorn-500", r'" 500 Internal Server Error$', is_regex=True),
    PatternSpec("kernel-oom", r"(Memory cgroup out of memory|Out of memory): Kill(ed)? process \d+", is_regex=True),
    PatternSpec("grpc-unavailable", "StatusCode.UNAVAILABLE"),
    PatternSpec("grpc-deadline", "statuscode.deadline_exceeded", ignore_case=True),
    PatternSpec("docker-oom", r"^\S+ container oom [0-9a-f]+", is_regex=True),
    PatternSpec("ip", r"(\d{1,3}\.){3}\d{1,3}:850[01]", is_regex=True),
]


def _naive(specs: list[PatternSpec], text: str) -> list[str]:
    data = text.encode("utf-8", "replace")[:MAX_LINE]
    if data.endswith(b"\n"):
        data = data[:-1]
    hits = []
    for spec in sorted(specs, key=lambda s: s.pattern_id):
        flags = re.IGNORECASE if spec.ignore_case else 0
        if re.compile(spec.source.encode("utf-8"), flags).search(data):
            hits.append(spec.pattern_id)
    return hits


@pytest.mark.parametrize("backend", BACKENDS)
def test_realistic_pack_on_real_samples(backend: str) -> None:
    ps = PatternSet(REALISTIC, backend=backend)
    assert ps.backend == backend
    lines = [
        line
        for kind in ("tfserving", "nginx", "gunicorn", "uvicorn", "kernel", "grpc", "docker_events", "raw")
        for line in sample_lines(kind)
    ]
    total = 0
    for line in lines:
        got = ps.match(line)
        assert got == _naive(REALISTIC, line), line
        total += len(got)
    assert total >= 20  # the samples really exercise the pack
    block = "\n".join(lines).encode()
    expected = [(n, _naive(REALISTIC, line)) for n, line in enumerate(lines)]
    offsets = {}
    pos = 0
    for n, line in enumerate(lines):
        offsets[pos] = n
        pos += len(line.encode()) + 1
    got_block = [(offsets[off], ids) for off, ids in ps.match_block(block)]
    assert got_block == [(n, ids) for n, ids in expected if ids]


def test_auto_picks_the_best_available_backend() -> None:
    ps = PatternSet(REALISTIC)
    assert ps.backend == BACKENDS[0]
    assert len(ps) == len(REALISTIC) and ps.ids == sorted(s.pattern_id for s in REALISTIC)
    assert PatternSet([]).match("anything") == []


def test_tuples_are_accepted_and_case_insensitivity_is_per_pattern() -> None:
    ps = PatternSet([("a", "Worker Timeout", False, True), ("b", "Worker Timeout", False, False)])
    assert ps.match("[CRITICAL] WORKER TIMEOUT (pid:1)") == ["a"]
    assert ps.match("Worker Timeout") == ["a", "b"]
    assert ps.match(b"worker timeout") == ["a"]


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a|aa)*b",
        r"(a+)+b",
        r"(\w+\s?)*$",
        r"(.*)*x",
        r"((ab)*c)+",
        r"(?=a)b",
        r"(?<!a)b",
        r"(a)\1",
        r"(?(1)a|b)",
        "x*",
        "",
        "(",
        "a{3,1}",
        "x?",
        r"(a{1,30}){1,30}b",
        "a{2000}",
        "(?>ab)c",
        "a++b",
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unsafe_or_invalid_patterns_are_rejected(pattern: str, backend: str) -> None:
    with pytest.raises(PatternError):
        PatternSet([PatternSpec("bad", pattern, is_regex=True)], backend=backend)


def test_bounded_nesting_and_optional_groups_are_allowed() -> None:
    for ok in (
        r"(\d{1,3}\.){3}\d{1,3}",
        r"(?:GET|POST) /",
        r"(free )?system",
        r"a+b+c+",
        r"x(?:ab|cd){2}",
        r"(a{2}){3}",
    ):
        check_pattern(PatternSpec("ok", ok, is_regex=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_end_anchor_after_an_optional_piece_matches_on_every_backend(backend: str) -> None:
    """hyperscan's own ``ba?$`` misses ``"x" * 15 + "ba"``; the set must not inherit that."""
    ps = PatternSet(
        [PatternSpec("opt", "ba?$", is_regex=True), PatternSpec("star", "Ba*$", is_regex=True, ignore_case=True)],
        backend=backend,
    )
    for n in range(0, 40):
        assert ps.match("x" * n + "ba") == ["opt", "star"], n
        assert ps.match("x" * n + "bc") == []
    block = b"\n".join(b"x" * n + b"ba" for n in range(40))
    assert [ids for _start, ids in ps.match_block(block)] == [["opt", "star"]] * 40


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(PatternError, match="duplicate"):
        PatternSet([("x", "a", False, False), ("x", "b", False, False)])


_ATOMS = ["a", "b", "c", " ", ".", r"\d", "[ab]", "[^a]", "1", "é", r"\.", "(?:ab|c)", r"\bb", "B"]
_QUANT = ["", "", "", "?", "*", "+", "{1,2}", "{2}"]


@st.composite
def _pattern(draw: st.DrawFn) -> PatternSpec:
    parts = draw(st.lists(st.tuples(st.sampled_from(_ATOMS), st.sampled_from(_QUANT)), min_size=1, max_size=5))
    body = "".join(a + q for a, q in parts)
    if draw(st.booleans()):
        body = "^" + body
    if draw(st.booleans()):
        body = body + "$"
    return PatternSpec("p", body, is_regex=draw(st.booleans()), ignore_case=draw(st.booleans()))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    specs=st.lists(_pattern(), min_size=1, max_size=25),
    texts=st.lists(st.text(alphabet="abcAB 1.é\x00\xff", max_size=40), min_size=1, max_size=20),
)
def test_property_multimatch_equals_naive_search(backend: str, specs: list[PatternSpec], texts: list[str]) -> None:
    vetted: list[PatternSpec] = []
    for n, spec in enumerate(specs):
        candidate = PatternSpec(f"p{n:03d}", spec.pattern, spec.is_regex, spec.ignore_case)
        try:
            check_pattern(candidate)
        except PatternError:
            continue
        vetted.append(candidate)
    if not vetted:
        return
    ps = PatternSet(vetted, backend=backend)
    for text in texts:
        assert ps.match(text) == _naive(vetted, text), (text, [(s.pattern_id, s.source, s.ignore_case) for s in vetted])
    block = "\n".join(texts).encode("utf-8", "replace")
    lines = block.split(b"\n")
    expected = [ids for ids in (_naive(vetted, line.decode("utf-8", "replace")) for line in lines)]
    got = {off: ids for off, ids in ps.match_block(block)}
    pos = 0
    for line, ids in zip(lines, expected, strict=True):
        assert got.get(pos, []) == ids
        pos += len(line) + 1


def _adversarial_lines(n: int) -> list[bytes]:
    rng = random.Random(1234)
    real = [line.encode() for kind in ("tfserving", "nginx", "gunicorn", "kernel") for line in sample_lines(kind)]
    fixed = [
        b"a" * 16384 + b"!",
        b"a" * 20000,
        b"\x00" * 16384,
        b"\xff\xfe" * 8192,
        b"(" * 16384,
        b"Resource exhausted: " * 900,
        b"1." * 8000,
        b"upstream timed out (110: " * 600,
        b" " * 16384 + b"b",
        b"\n" * 100,
    ]
    lines = list(fixed)
    while len(lines) < n:
        kind = rng.random()
        if kind < 0.01:
            lines.append(rng.randbytes(rng.randrange(1000, 16385)))
        elif kind < 0.5:
            lines.append(rng.randbytes(rng.randrange(0, 200)))
        else:
            base = rng.choice(real)
            cut = rng.randrange(len(base) + 1)
            lines.append(base[:cut] + rng.randbytes(rng.randrange(0, 30)) + base[cut:])
    return lines


@pytest.mark.parametrize("backend", BACKENDS)
def test_100k_adversarial_lines_in_bounded_time(backend: str) -> None:
    ps = PatternSet(REALISTIC, backend=backend)
    lines = _adversarial_lines(100_000)
    start = time.perf_counter()
    matched = 0
    for line in lines:
        matched += bool(ps.match(line))
    elapsed = time.perf_counter() - start
    assert matched > 0
    assert elapsed < 60, f"{backend}: {elapsed:.1f}s"
    # and the same answers as naive search on a slice (naive re is the slow part here)
    for line in lines[:2000:7]:
        assert ps.match(line) == _naive(REALISTIC, line.decode("utf-8", "replace"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_width_match_at_a_line_start_is_found_in_blocks(backend: str) -> None:
    """``^\\bb?`` matches "1" with zero width at its start; a block scan must see that line too."""
    ps = PatternSet([PatternSpec("a", "a"), PatternSpec("p", r"^\bb?", is_regex=True)], backend=backend)
    assert ps.match("1") == ["p"]
    assert ps.match_block(b"\n1") == [(1, ["p"])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_start_anchored_optional_piece_matches_on_a_later_line_of_a_block(backend: str) -> None:
    """hyperscan's multi-line mode misses ``^ ?c`` past the first line; the block scan must not."""
    ps = PatternSet([PatternSpec("p", "^ ?c", True, False)], backend=backend)
    block = "\n".join(["1111éé", "1111111", "c"]).encode()
    assert ps.match_block(block) == [(block.rindex(b"c"), ["p"])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_start_anchored_patterns_find_every_line_of_a_block_the_line_path_finds(backend: str) -> None:
    """A ``^`` pattern in a block scan: the first line, later lines, an optional piece right after
    the ``^`` (the envelope guard's shape), and a top-level alternative that needs no line start."""
    specs = [
        PatternSpec("guard", r"^(?:\x1b\[[0-9;]{0,16}m)?[a-z0-9][a-z0-9_.-]{0,12} {1,8}\|", True),
        PatternSpec("alt", "^tfs|oom", True),
        PatternSpec("opt", "^ ?c", True),
    ]
    ps = PatternSet(specs, backend=backend)
    lines = [
        "tfs-1    | hello",
        "x" * 40,
        "\x1b[36mtfs-1 \x1b[0m   | colour",
        "c",
        " c at a later line",
        "a line that mentions oom",
        "not tfs at the start",
        "tfs at the start",
        "ab |",
    ]
    for first in range(len(lines)):
        rotated = lines[first:] + lines[:first]
        block = "\n".join(rotated).encode()
        expected: list[tuple[int, list[str]]] = []
        offset = 0
        for line in rotated:
            if ids := ps.match(line):
                expected.append((offset, ids))
            offset += len(line.encode()) + 1
        assert ps.match_block(block) == expected, rotated
