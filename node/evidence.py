"""Offline checks of equivocation evidence, for operators and third parties.

A node that catches a peer signing two different payloads for one broadcast instance
writes the two signed digests to its metrics file (a ``fault`` record with ``evidence``,
see node/metrics.py). Anyone holding the roster can check such a proof without trusting
the node that reported it: the roster gives the accused node's public key, and an honest
node never signs two digests for one instance (DESIGN 4.1). ``jungle verify-evidence``
runs :func:`verify_evidence_lines` over a file and prints one verdict per proof.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node.roster import Roster
from protocol.crypto import EquivocationProof
from protocol.messages import InstanceId, Tag


@dataclass(frozen=True, slots=True)
class Verdict:
    #: 1-based line number in the input
    line: int
    valid: bool
    #: one line for the operator: VALID/INVALID/WRONG SESSION/MALFORMED and why
    text: str


def proof_from_json(evidence: Mapping[str, Any]) -> EquivocationProof:
    """The proof ``EquivocationProof.to_json()`` wrote; ValueError/KeyError/TypeError if not."""
    tag = Tag(*(int(value) for value in evidence["tag"]))
    return EquivocationProof(
        session=bytes.fromhex(evidence["session"]),
        iid=InstanceId(int(evidence["origin"]), tag),
        digest_a=bytes.fromhex(evidence["digest_a"]),
        signature_a=bytes.fromhex(evidence["signature_a"]),
        digest_b=bytes.fromhex(evidence["digest_b"]),
        signature_b=bytes.fromhex(evidence["signature_b"]),
    )


def verify_evidence_lines(lines: Iterable[str], roster: Roster) -> list[Verdict]:
    """A verdict for every JSON line carrying ``evidence``; other lines are skipped."""
    verdicts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        evidence = record.get("evidence") if isinstance(record, dict) else None
        if evidence:
            verdicts.append(Verdict(number, *_judge(evidence, roster)))
    return verdicts


def _judge(evidence: object, roster: Roster) -> tuple[bool, str]:
    try:
        if not isinstance(evidence, dict):
            raise TypeError(f"evidence is a {type(evidence).__name__}, not an object")
        proof = proof_from_json(evidence)
    except (KeyError, TypeError, ValueError) as error:
        return False, f"MALFORMED proof: {error!r}"
    origin, tag = proof.iid.origin, proof.iid.tag
    what = f"node {origin} at step {tag.step} phase {tag.phase} round {tag.round} kind {tag.kind}"
    if proof.session != roster.session_id:
        return False, f"WRONG SESSION: the proof against {what} is for another session"
    if not 0 <= origin < roster.n:
        return False, f"INVALID: node {origin} is not in the roster"
    if not proof.verify(roster.public_keys[origin]):
        return False, f"INVALID: the signatures do not verify for {what}"
    return True, f"VALID: {what} signed two different payloads"
