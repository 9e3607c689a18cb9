"""The hostile corpus (tests/reliability/hostile_corpus.py, over 200 bad entries) through the
real agent: `run --once` in a provisioned sandbox root against the simulator, on every
platform of the table.

Each platform gets the corpus its wire format can carry, mixed with good entries in the
same snapshot: GCE every entry (bad names as `USER:KEY` lines, bad key lines for users of
their own) plus a 10 MB attribute; the platforms whose keys carry no user name (EC2,
NoCloud, OpenStack and DigitalOcean give them to the default user, Azure to its admin)
every key entry (each a key of its own), the megabyte lines only where a snapshot may be
that large (DigitalOcean's and Azure's one document, up to 16 MiB; EC2, NoCloud and
OpenStack refuse a file over 1 MiB, which the oversized-value case covers). Then:

- nothing unsafe written or run: the sandbox tree before and after differs only where the
  agent owns files (account files, the good users' homes, its records), every account
  command run (seen through shims first on PATH) names only good users, and no key of the
  corpus reaches an authorized_keys file;
- the good entries of the same snapshot applied, the provisioned ones kept;
- each refusal logged once, and no key material (the corpus' base64) in any log line.

Whole documents that cannot or may not be read as given (GCE only: a wrong JSON type in
every field, deep nesting, a 10 MB value) each get a run of their own; those the agent
can read keep every account as it was, and none of them crashes it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests

from tests.integration.conftest import scenario
from tests.reliability import hostile_corpus as corpus
from tests.reliability.conftest import (
    AGENT,
    IDS,
    PLATFORMS,
    PlatformCase,
    Zygote,
    clone,
    ed25519,
    keys_of,
    parse_passwd,
    read,
    rejection_counts,
    tree_listing,
    url_of,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

ALICE, BOB, CAROL = ed25519("hc-alice"), ed25519("hc-bob"), ed25519("hc-carol")
BEFORE = {"alice": [ALICE], "bob": [BOB]}
GOOD = corpus.good_keys(3)
FLOOD_SAME, SAME_KEY = corpus.flood_of_one_key()
FLOOD_BAD = corpus.flood_of_bad_lines()
TEN_MB = 10 * 1024 * 1024
ACCOUNT_TOOLS = ("useradd", "usermod", "userdel", "groupadd", "gpasswd", "groupmod", "chpasswd")
SHIM = """#!/bin/sh
{{ printf '%s\\0' "$(basename "$0")" "$@"; printf '\\n'; }} >> {log}
exec {real} "$@"
"""


@attrs.frozen
class Outcome:
    code: int
    stdout: str
    stderr: str
    commands: list[list[str]]
    before: dict[str, tuple[int, int, int]]
    after: dict[str, tuple[int, int, int]]
    root: Path


def shims(work: Path) -> tuple[Path, Path]:
    """A directory of account-tool wrappers that log their argv, then run the real tool."""
    folder, log = work / "shims", work / "commands.log"
    folder.mkdir()
    for tool in ACCOUNT_TOOLS:
        real = next(
            (p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}", f"/usr/bin/{tool}") if os.path.exists(p)), None
        )
        if real is None:
            continue
        path = folder / tool
        path.write_text(SHIM.format(log=log, real=real))
        path.chmod(0o755)
    return folder, log


def run(
    case: PlatformCase, root: Path, url: str, work: Path, wait: float = 60, zygote: Zygote | None = None
) -> Outcome:
    """`guestagent run --once` with account-tool shims first on PATH: a process of its own
    (`python -m guestagent`), or forked from the zygote when one is given (many short runs)."""
    folder, log = shims(work)
    before = tree_listing(root)
    path = f"{folder}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    argv = [
        "run",
        "--once",
        "--root",
        str(root),
        "--metadata-url",
        url,
        "--platform",
        case.name,
        "--wait",
        str(wait),
    ]
    if zygote is None:
        done = subprocess.run(
            [*AGENT, *argv],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "PATH": path},
        )
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        errors = work / "agent.log"
        code = zygote.wait(zygote.start(argv, errors, env={"PATH": path}), errors)
        stdout, stderr = read(Path(f"{errors}.out")) or "", read(errors) or ""
    commands = []
    for line in (read(log) or "").splitlines():
        commands.append(line.split("\0")[:-1])
    return Outcome(code, stdout, stderr, commands, before, tree_listing(root), root)


AGENT_FILES = (
    "etc/hostname",
    "etc/hosts",
    "etc/google_instance_id",
    "etc/boto.cfg",
    "etc/sudoers.d/google_sudoers",
    "etc/sudoers.d/guestagent",
)


def owned(path: str, new_users: Collection[str], keyed: Collection[str] = ()) -> bool:
    """Whether a run may add or change this path (relative to the root): a new user's home,
    the keys of a user whose keys changed, the account files, the agent's own records."""
    parts = path.split("/")
    if parts[0] == "home" and len(parts) >= 2 and parts[1] in new_users:
        return True
    if parts[0] == "home" and len(parts) >= 3 and parts[1] in keyed and parts[2] == ".ssh":
        return True
    if parts[:2] == ["var", "mail"] and len(parts) == 3 and parts[2] in new_users:
        return True
    if path in {
        f"etc/{name}{suffix}"
        for name in ("passwd", "group", "shadow", "gshadow", "subuid", "subgid")
        for suffix in ("", "-")
    }:
        return True
    if parts[:3] in (["var", "lib", "guestagent"], ["var", "lib", "google"]) or path.startswith(
        "etc/ssh/ssh_host_"
    ):
        return True
    return path in AGENT_FILES


def unsafe_paths(outcome: Outcome, new_users: Collection[str], keyed: Collection[str] = ()) -> list[str]:
    """What a run added, changed or removed outside the places the agent owns."""
    problems = []
    for path, (mode, uid, size) in outcome.after.items():
        old = outcome.before.get(path)
        changed = old is None or (old != (mode, uid, size) and not _is_dir(mode)) or old[:2] != (mode, uid)
        if changed and not owned(path, new_users, keyed):
            problems.append(f"{'added' if old is None else 'changed'}: {path!r}")
    for path in outcome.before.keys() - outcome.after.keys():
        problems.append(f"removed: {path!r}")
    return problems


def _is_dir(mode: int) -> bool:
    return stat.S_ISDIR(mode)


def unsafe_commands(outcome: Outcome, allowed_users: set[str], allowed_groups: set[str]) -> list[str]:
    """Every account command names (as its last word: the user, or the group it creates)
    a good user or a group that exists; none carries a word from outside the sandbox."""
    problems = []
    for argv in outcome.commands:
        if argv[-1] not in allowed_users | allowed_groups:
            problems.append(f"ran {argv[0]} for {argv[-1][:60]!r}")
        if "--prefix" not in argv or argv[argv.index("--prefix") + 1] != str(outcome.root):
            problems.append(f"ran {argv[0]} without --prefix {outcome.root}")
    return problems


def leaked(text: str, entries: list[corpus.Entry]) -> list[str]:
    return [e.id for e in entries if e.body and len(e.body) >= 16 and e.body in text]


def installed_corpus_keys(root: Path, entries: list[corpus.Entry]) -> list[str]:
    found = []
    texts = [p.read_text(errors="replace") for p in (root / "home").rglob("authorized_keys")]
    for entry in entries:
        if entry.body and any(entry.body in text for text in texts):
            found.append(entry.id)
    return found


# ---------------------------------------------------------------- the mixed snapshot


def _for(case: PlatformCase) -> list[corpus.Entry]:
    """The entries the platform's format can carry; the megabyte lines only where the
    snapshot may hold them all (with room for the rest of the document)."""
    entries = corpus.entries()
    sized = sum(len(e.text) for e in entries if e.sized)
    room = case.max_snapshot is None or case.max_snapshot > 2 * sized
    return [
        e
        for e in entries
        if ((e.kind == "key" and not e.named_only) or case.named_users) and (not e.sized or room)
    ]


def mixed_metadata(case: PlatformCase, entries: list[corpus.Entry]) -> tuple[dict[str, Any], str | None]:
    """(scenario, GCE ssh-keys value or None): the corpus mixed with good entries."""
    users = {**BEFORE, **{f"good{i}": [k] for i, k in enumerate(GOOD)}}
    if case.named_users:
        lines = [f"{u}:{k}" for u, keys in BEFORE.items() for k in keys]
        for index, entry in enumerate(entries):
            lines.append(entry.text if entry.kind == "name" else f"k{index:03d}:{entry.text}")
        lines += [f"good{i}:{k}" for i, k in enumerate(GOOD)]
        scn = scenario({}, attributes={"blob": "x" * TEN_MB})
        return scn, "\n".join(lines)
    keyed: dict[str, list[str]] = {**users}
    for index, entry in enumerate(entries):
        keyed[f"k{index:03d}"] = [entry.text]
    assert sum(len(v) for v in keyed.values()) <= 95, "EC2 lists at most 100 keys: pack the corpus"
    return scenario(keyed), None


def expected_accounts(case: PlatformCase) -> dict[str, list[str]]:
    if case.named_users:
        return {**BEFORE, **{f"good{i}": [k] for i, k in enumerate(GOOD)}}
    return {case.owner: [ALICE, BOB, *GOOD]}


@pytest.mark.parametrize("case", PLATFORMS, ids=IDS)
def test_hostile_entries_mixed_with_good_ones(case: PlatformCase, provisioned, tmp_path: Path) -> None:
    entries = _for(case)
    assert case.name != "gce" or len(entries) >= 200
    root = clone(provisioned(case, BEFORE), tmp_path / "root")
    users_before = set(parse_passwd((root / "etc/passwd").read_text()))
    scn, ssh_keys = mixed_metadata(case, entries)
    sim = case.start(scn)
    try:
        if ssh_keys is not None:
            sim.set("instance/attributes/ssh-keys", ssh_keys)
        outcome = run(case, root, url_of(case, sim), tmp_path)
    finally:
        sim.stop()
    problems = []
    log = outcome.stdout + outcome.stderr
    if "Traceback" in log:
        problems.append("traceback:\n" + outcome.stderr[-3000:])
    if outcome.code != 0:
        problems.append(f"exit {outcome.code}: {outcome.stdout[-2000:]}")
    # Good entries applied, provisioned ones kept, nothing else anywhere.
    want = expected_accounts(case)
    passwd = parse_passwd((root / "etc/passwd").read_text())
    new_users = set(passwd) - users_before
    if new_users != set(want) - users_before:
        problems.append(f"users created: {sorted(new_users)}, expected {sorted(set(want) - users_before)}")
    for account, keys in want.items():
        have = keys_of(root, case, account)
        if sorted(have) != sorted(keys):
            problems.append(f"{account}: managed keys {len(have)}, expected {len(keys)} (the good ones)")
    every = entries
    stray = installed_corpus_keys(root, every)
    if stray:
        problems.append(f"corpus keys installed: {stray}")
    # Only the owner's keys change on a platform without names (it gains good keys).
    problems += unsafe_paths(outcome, new_users, () if case.named_users else (case.owner,))
    problems += unsafe_commands(outcome, set(want), _groups(root))
    # Logs: once per refusal, never with key material.
    repeats = {line: n for line, n in rejection_counts(outcome.stderr).items() if n > 1}
    if repeats:
        problems.append(f"logged more than once: {list(repeats.items())[:3]}")
    leaks = leaked(log, every)
    if leaks:
        problems.append(f"key material of these entries in the log: {leaks}")
    if any(k.split()[1] in log for k in GOOD):
        problems.append("key material of a good key in the log")
    if case.named_users:
        problems += _each_line_refused_once(outcome.stderr, entries)
    assert not problems, "\n".join(f"{case.name}: {p}" for p in problems)


def _groups(root: Path) -> set[str]:
    return {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}


def _each_line_refused_once(stderr: str, entries: list[corpus.Entry]) -> list[str]:
    """GCE: every line of every bad entry was refused with a log line of its own, once
    (a line-level refusal names its line; a name refused later names the user)."""
    problems = []
    number = len(BEFORE)  # the provisioned users' lines come first
    for index, entry in enumerate(entries):
        for offset, text in enumerate(
            entry.text.split("\n") if entry.kind == "name" else f"k{index:03d}:{entry.text}".split("\n")
        ):
            number += 1
            if not text.rstrip("\r").strip() or text.lstrip().startswith("#"):
                continue  # blank and comment lines are not entries
            said = stderr.count(f"ssh-keys line {number}:")
            user = text.partition(":")[0].strip()
            said += stderr.count(f"refused user {user!r}:") if offset == 0 and user else 0
            if said != 1 and not (entry.silent and said == 0):
                problems.append(f"{entry.id} line {number}: refused {said} times in the log")
    return problems


# ---------------------------------------------------------------- whole documents


def _gce_document(sim: Any) -> dict[str, Any]:
    response = requests.get(
        sim.url("gce"), params={"recursive": "true"}, headers={"Metadata-Flavor": "Google"}, timeout=30
    )
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


# Objects whose wrong type leaves no instance to describe, or that hold what accounts act
# on: the document may be refused (exit 2) or read with accounts held; never read as empty.
FATAL = {
    ("instance",),
    ("instance", "id"),
    ("instance", "attributes"),
    ("project", "attributes"),
    ("project",),
}
# Objects the agent reads; the others (disks, licenses, service accounts...) are replaced
# all in one document.
READ = {
    "networkInterfaces",
    "virtualClock",
    "forwardedIps",
    "forwardedIpv6s",
    "ipAliases",
    "targetInstanceIps",
}


def _documents(base: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, JSON body): per wrong type one document with every leaf that is not of that
    type set to it; per object or list the agent reads one document with it replaced (a
    list by an object, an object by a list), and one with all the others replaced; the
    fatal objects as null and as a list; deep nesting; a 10 MB value."""
    paths = corpus.gce_field_paths(base)
    out = []
    for kind, wrong in corpus.WRONG.items():
        document: object = base
        for path in paths:
            current = _get(base, path)
            if path in FATAL or isinstance(current, dict | list) or corpus.kind_of(current) == kind:
                continue
            document = corpus.with_value(document, path, wrong)
        out.append((f"every-leaf-{kind}", json.dumps(document)))
    others: object = base
    for path in paths:
        current = _get(base, path)
        if not isinstance(current, dict | list) or path in FATAL or path[0] != "instance":
            continue
        swapped = corpus.WRONG["object" if isinstance(current, list) else "list"]
        if path[-1] in READ or (len(path) >= 3 and path[1] == "networkInterfaces" and path[-1].isdigit()):
            out.append(
                (
                    f"{'/'.join(path)}-{corpus.kind_of(swapped)}",
                    json.dumps(corpus.with_value(base, path, swapped)),
                )
            )
        elif len(path) == 2:
            others = corpus.with_value(others, path, swapped)
    out.append(("other-objects-swapped", json.dumps(others)))
    for path in sorted(FATAL):
        for kind in ("null", "list") if path != ("instance", "id") else ("null", "object"):
            document = corpus.with_value(base, path, corpus.WRONG[kind])
            out.append((f"fatal-{'/'.join(path)}-{kind}", json.dumps(document)))
    deep = corpus.with_value(base, ("instance", "attributes", "deep"), "__DEEP__")
    out.append(("deep-nesting", json.dumps(deep).replace('"__DEEP__"', "[" * 5000 + "]" * 5000)))
    huge = corpus.with_value(base, ("instance", "attributes", "user-data"), "u" * TEN_MB)
    out.append(("ten-mb-value", json.dumps(huge)))
    return out


def _get(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


def test_wrong_types_deep_nesting_and_huge_values_in_whole_gce_documents(
    provisioned, zygote: Zygote, tmp_path: Path
) -> None:
    """Each document served as the whole recursive answer to a provisioned guest: no crash,
    every account and key as it was, no account command run, nothing outside the agent's
    files touched. (A document it cannot use ends the run with exit 2 after --wait 2.)"""
    case = next(c for c in PLATFORMS if c.name == "gce")
    # alice and bob from instance ssh-keys, carol from the project's.
    scn = scenario(BEFORE)
    scn["users"].append({"name": "carol", "scope": "project", "keys": [{"key": CAROL}]})
    template = clone(provisioned(case, BEFORE), tmp_path / "template")
    sim = case.start(scn)
    try:
        first = run(case, template, url_of(case, sim), tmp_path, zygote=zygote)
        assert first.code == 0 and keys_of(template, case, "carol") == [CAROL], first.stdout
        documents = _documents(_gce_document(sim))
    finally:
        sim.stop()
    assert len(documents) >= 20
    everyone = {**BEFORE, "carol": [CAROL]}

    def one(item: tuple[int, tuple[str, str]]) -> list[str]:
        number, (name, body) = item
        work = tmp_path / f"doc{number}"
        work.mkdir()
        root = clone(template, work / "root")
        sim = case.start(scn)
        try:
            sim.add_fault("*", "body", body=body, platform="gce")
            outcome = run(case, root, url_of(case, sim), work, wait=2, zygote=zygote)
        finally:
            sim.stop()
        problems = []
        if "Traceback" in outcome.stdout + outcome.stderr:
            problems.append("traceback: " + outcome.stderr[-2000:])
        if outcome.code not in (0, 2):
            problems.append(f"exit {outcome.code}: {outcome.stdout[-800:]}")
        for account, keys in everyone.items():
            if keys_of(root, case, account) != keys:
                problems.append(f"{account}'s keys changed: {outcome.stdout[-800:]}")
        if outcome.commands:
            problems.append(f"ran {[c[0] for c in outcome.commands]}")
        problems += unsafe_paths(outcome, ())
        return [f"{name}: {p}" for p in problems]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, enumerate(documents)))
    problems = [p for found in results for p in found]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", PLATFORMS, ids=IDS)
def test_a_ten_megabyte_user_data_holds_only_what_reads_it(
    case: PlatformCase, provisioned, zygote: Zygote, tmp_path: Path
) -> None:
    """10 MB of user data beside a new key, in one snapshot: the key is installed (user
    data is refused or kept by what reads it, scripts and first boot), never a crash,
    also where the user data is a field of the one document (DigitalOcean, Azure's IMDS).
    (The first run would stop at --wait 10 if the platform refused the whole snapshot.)"""
    root = clone(provisioned(case, BEFORE), tmp_path / "root")
    users = {**BEFORE, "good0": [GOOD[0]]}
    sim = case.start(scenario(users, user_data="#!/bin/sh\n" + "#" * TEN_MB + "\n"))
    try:
        outcome = run(case, root, url_of(case, sim), tmp_path, wait=10, zygote=zygote)
    finally:
        sim.stop()
    assert "Traceback" not in outcome.stderr
    for account, keys in case.accounts(users).items():
        assert sorted(keys_of(root, case, account)) == sorted(keys), (account, outcome.stderr[-2000:])


@pytest.mark.parametrize("case", PLATFORMS, ids=IDS)
def test_thousands_of_lines_for_one_user(
    case: PlatformCase, provisioned, zygote: Zygote, tmp_path: Path
) -> None:
    """2000 refused lines for one user, and one key repeated 2000 times for another (or,
    where keys have no user, both as one key entry each of the account keys go to: an
    entry of many lines is that many key lines), beside a good key: the good key and the
    repeated one (once) are installed, each refused line is logged once (OpenStack lists
    every key twice, in public_keys and keys[]: still once)."""
    root = clone(provisioned(case, BEFORE), tmp_path / "root")
    if case.named_users:
        sim = case.start(scenario(BEFORE))
        lines = [f"{u}:{k}" for u, keys in BEFORE.items() for k in keys] + [f"good0:{GOOD[0]}"]
        lines += ["flood:" + line for line in FLOOD_BAD.text.split("\n")]
        lines += ["floodsame:" + line for line in FLOOD_SAME.text.split("\n")]
        sim.set("instance/attributes/ssh-keys", "\n".join(lines))
        want = {**BEFORE, "good0": [GOOD[0]], "floodsame": [SAME_KEY]}
    else:
        sim = case.start(
            scenario(
                {**BEFORE, "good0": [GOOD[0]], "flood": [FLOOD_BAD.text], "floodsame": [FLOOD_SAME.text]}
            )
        )
        want = {case.owner: [ALICE, BOB, GOOD[0], SAME_KEY]}
    try:
        outcome = run(case, root, url_of(case, sim), tmp_path, zygote=zygote)
    finally:
        sim.stop()
    assert "Traceback" not in outcome.stderr
    assert outcome.code == 0, outcome.stdout[-2000:]
    problems = []
    for account, keys in want.items():
        have = keys_of(root, case, account)
        if sorted(have) != sorted(keys):
            problems.append(
                f"{account}: {len(have)} managed keys, expected {len(keys)}: {outcome.stdout[-600:]}"
            )
    repeats = {line: n for line, n in rejection_counts(outcome.stderr).items() if n > 1}
    if repeats:
        problems.append(f"logged more than once: {list(repeats.items())[:3]}")
    refused = sum(1 for line in outcome.stderr.splitlines() if "key data is truncated" in line)
    if refused != corpus.FLOOD_LINES:
        problems.append(f"{refused} refusals logged for {corpus.FLOOD_LINES} bad lines")
    assert not problems, "\n".join(f"{case.name}: {p}" for p in problems)
