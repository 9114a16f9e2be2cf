"""Properties of the derived nonce (gxsubmit.txid): stable across processes, distinct per request,
content and generation, keyed, versioned."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gxsubmit.txid import DOMAIN, KEY_BYTES, VERSION, TxIdDeriver, content_digest, derive_nonce

texts = st.text(max_size=40)
keys = st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)
args_lists = st.lists(st.text(max_size=12), max_size=5)
generations = st.integers(min_value=0, max_value=2**32 - 1)


def _nonce(key: bytes, tenant: str, request: str, args: list[str], gen: int) -> bytes:
    return derive_nonce(key, tenant_id=tenant, request_id=request,
                        content=content_digest("gxchannel", "gx", "F", args), generation=gen)


@given(keys, texts, texts, args_lists, generations)
def test_pure_and_versioned(key: bytes, tenant: str, request: str, args: list[str], gen: int) -> None:
    a = _nonce(key, tenant, request, args, gen)
    assert a == _nonce(key, tenant, request, list(args), gen)
    assert a[0] == VERSION and len(a) == 25


@given(keys, texts, texts, texts, texts, args_lists, generations)
def test_distinct_per_request(key: bytes, t1: str, r1: str, t2: str, r2: str, args: list[str],
                              gen: int) -> None:
    if (t1, r1) != (t2, r2):
        assert _nonce(key, t1, r1, args, gen) != _nonce(key, t2, r2, args, gen)


@given(keys, texts, texts, args_lists, generations, generations)
def test_distinct_per_generation(key: bytes, tenant: str, request: str, args: list[str], g1: int,
                                 g2: int) -> None:
    if g1 != g2:
        assert _nonce(key, tenant, request, args, g1) != _nonce(key, tenant, request, args, g2)


@given(keys, texts, texts, args_lists, args_lists)
def test_distinct_per_content(key: bytes, tenant: str, request: str, a1: list[str], a2: list[str]) -> None:
    # A request id reused for another command gets another tx id (never the old command's transaction).
    if a1 != a2:
        assert _nonce(key, tenant, request, a1, 0) != _nonce(key, tenant, request, a2, 0)


@given(keys, keys, texts, texts)
def test_keyed(k1: bytes, k2: bytes, tenant: str, request: str) -> None:
    if k1 != k2:
        assert _nonce(k1, tenant, request, [], 0) != _nonce(k2, tenant, request, [], 0)


def test_length_prefixes_keep_fields_apart() -> None:
    key = bytes(range(32))
    # "ab"+"c" and "a"+"bc" would collide under plain concatenation.
    assert _nonce(key, "ab", "c", [], 0) != _nonce(key, "a", "bc", [], 0)
    assert content_digest("c", "gx", "F", ["a", "b"]) != content_digest("c", "gx", "F", ["ab"])
    assert content_digest("c", "gx", "F", ["a", ""]) != content_digest("c", "gx", "F", ["a"])


def test_domain_names_the_version() -> None:
    assert DOMAIN == b"gxsubmit/fabric-tx-nonce/v1\x00" and VERSION == 1


@settings(max_examples=5, deadline=None)
@given(keys, texts, texts, args_lists, st.integers(min_value=0, max_value=1000))
def test_stable_across_processes(key: bytes, tenant: str, request: str, args: list[str], gen: int) -> None:
    # Another interpreter (its own hash seed) derives the same nonce: nothing process-local goes in.
    code = (
        "import sys, json; from gxsubmit.txid import TxIdDeriver as D; a = json.loads(sys.stdin.read()); "
        "print(D(bytes.fromhex(a[0])).nonce(tenant_id=a[1], request_id=a[2], channel='gxchannel', "
        "chaincode='gx', function='F', args=a[3], generation=a[4]).hex())"
    )
    out = subprocess.run([sys.executable, "-c", code],
                         input=json.dumps([key.hex(), tenant, request, args, gen]),
                         capture_output=True, text=True, check=True, timeout=60,
                         env={"PYTHONHASHSEED": "random", "PATH": "/usr/bin:/bin"})
    assert bytes.fromhex(out.stdout.strip()) == _nonce(key, tenant, request, args, gen)


def test_known_answer() -> None:
    # Pinned: a change to the derivation changes every tx id, and must come with a new version.
    d = TxIdDeriver(bytes(32))
    n = d.nonce(tenant_id="default", request_id="r1", channel="gxchannel", chaincode="gx",
                function="TokenomicsContract:Mint", args=["a", "1", "x"], generation=0)
    assert n.hex() == KNOWN


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TxIdDeriver(b"short")
    with pytest.raises(ValueError, match="generation"):
        derive_nonce(bytes(32), tenant_id="t", request_id="r", content=bytes(32), generation=-1)
    assert "hidden" in repr(TxIdDeriver(bytes(32)))


KNOWN = "011bfc1ae4e67a73e9ae00c854aa1d0ed774e990e5aabfbc49"
