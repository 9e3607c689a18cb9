"""Hypothesis properties for every parser the agent has (pure: no processes, no sockets).

CI runs each property with the `reliability-ci` profile (200 examples, no deadline);
`nox -s fuzz` runs the same properties with `reliability-long` (HYPOTHESIS_PROFILE, and
FUZZ_EXAMPLES for the count). Parsers covered:

- key lines (`parse_key_line`), user names (`check_username`), GCE `USER:KEY` lines and
  default-user key lists (`parse_user_key_lines`, `parse_default_user_keys`);
- INI config layering (`load_config`): never raises, and the last valid value wins;
- addresses: `canonical_ip`, `canonical_network`, `canonical_mac`, JSON with a depth bound;
- every platform parser: `parse_gce`, `parse_ec2`, `parse_nocloud` (and `cmdline_seed`)
  with shapes of their own wire formats, and every `parse_<platform>` found in
  guestagent.domain.platforms (OpenStack, Azure, DigitalOcean, SmartOS, VMware, CPIO...)
  with inputs built from its own types: whatever comes in, the parser returns a snapshot
  whose keys OpenSSH would take, or raises its own ValueError subclass, nothing else.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import ipaddress
import json
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import guestagent.domain.platforms as platforms_pkg
from guestagent.domain.config import Config, ConfigLayer, load_config
from guestagent.domain.jsondoc import MAX_DEPTH, JsonRefused, loads, nesting_depth
from guestagent.domain.metadata import InstanceMetadata
from guestagent.domain.platforms.ec2 import KEYS, MACS, Ec2Fetched, Ec2MetadataError, parse_ec2
from guestagent.domain.platforms.gce import MetadataError, parse_gce
from guestagent.domain.platforms.nocloud import NoCloudError, Unreadable, cmdline_seed, parse_nocloud
from guestagent.domain.ssh_keys import parse_default_user_keys, parse_user_key_lines
from guestagent.domain.validation import USERNAME_MAX, Invalid, check_username, parse_key_line
from guestagent.domain.values import canonical_ip, canonical_mac, canonical_network
from tests.keys import ECDSA, ED25519, ED25519_BOB, RSA
from tests.reliability import hostile_corpus as corpus
from tests.reliability.conftest import fuzz_settings

FUZZ = fuzz_settings()
KEYS_OK = [ED25519, ED25519_BOB, ECDSA, RSA]

# ---------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
# Key-ish text: real keys, the corpus, their pieces, and noise around them.
corpus_texts = st.sampled_from([e.text[:2000] for e in corpus.entries()])
key_texts = st.one_of(
    st.sampled_from(KEYS_OK),
    corpus_texts,
    st.builds(
        lambda k, i, j: k[:i] + k[j:], st.sampled_from(KEYS_OK), st.integers(0, 120), st.integers(0, 120)
    ),
    st.builds(lambda a, k, b: a + k + b, st.text(max_size=8), st.sampled_from(KEYS_OK), st.text(max_size=8)),
    st.text(max_size=200),
)
names = st.one_of(
    st.sampled_from(corpus.BAD_NAMES[:80]),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True),
)


def check_snapshot(md: InstanceMetadata) -> None:
    """What every parser's output promises, whatever came in."""
    assert isinstance(md, InstanceMetadata)
    assert isinstance(md.instance_id, str) and md.instance_id
    for key in md.ssh_keys:
        parsed = parse_key_line(key.line)  # every key installed is one OpenSSH reads
        assert parsed.text == key.line
        assert not any(c in key.line for c in "\r\n\0")
        if key.user is not None:
            check_username(key.user, system_users=())
    for rejection in md.rejections:
        assert isinstance(rejection.describe(), str)


# ---------------------------------------------------------------- key lines and names


@FUZZ
@given(key_texts)
def test_key_line_is_refused_with_a_reason_or_safe_to_write(text: str) -> None:
    try:
        parsed = parse_key_line(text)
    except Invalid as exc:
        reason = str(exc)
        assert reason and "\n" not in reason
        for key in KEYS_OK:
            assert key.split()[1] not in reason  # no key material in a reason
        return
    assert parsed.text == text.strip(" \t")
    assert parsed.text.isascii() and not any(c in parsed.text for c in "\r\n\0")
    assert parse_key_line(parsed.text) == parsed  # stable


@FUZZ
@given(names)
def test_username_is_refused_or_safe_for_useradd_and_paths(name: str) -> None:
    try:
        checked = check_username(name, system_users=())
    except Invalid:
        return
    assert checked == name and 1 <= len(name) <= USERNAME_MAX and name.isascii()
    assert not name.startswith("-") and "/" not in name and name not in (".", "..")
    assert all(c.isalnum() or c in "._-" for c in name)


@FUZZ
@given(st.lists(st.tuples(names, key_texts), max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_gce_ssh_keys_lines(pairs: list[tuple[str, str]], newline: str) -> None:
    text = newline.join(f"{u}:{k}" for u, k in pairs)
    keys, rejections = parse_user_key_lines(text, "ssh-keys")
    for key in keys:
        check_username(key.user or "", system_users=())
        assert parse_key_line(key.line).text == key.line
    # every non-blank, non-comment line is a key or a refusal
    lines = [raw.rstrip("\r") for raw in text.split("\n")]
    assert len(keys) + len(rejections) == sum(
        1 for line in lines if line.strip() and not line.lstrip().startswith("#")
    )


@FUZZ
@given(st.lists(key_texts, max_size=8))
def test_default_user_key_lists(lines: list[str]) -> None:
    keys, _ = parse_default_user_keys(lines, "keys")
    for key in keys:
        assert key.user is None
        assert parse_key_line(key.line).text == key.line


# ---------------------------------------------------------------- INI layering

BOOL_OPTIONS = [
    ("Accounts", "deprovision_remove"),
    ("Daemons", "accounts_daemon"),
    ("InstanceSetup", "set_hostname"),
]
bool_words = st.sampled_from(
    ["true", "false", "yes", "no", "1", "0", "on", "off", "TRUE", " t ", "maybe", "", "2"]
)
ini_noise = st.text(alphabet=st.sampled_from(list("[]=:;#% \t\nabcAccounts_-.01")), max_size=120)


@FUZZ
@given(st.lists(ini_noise, max_size=4))
def test_config_layers_of_any_text_never_raise(texts: list[str]) -> None:
    config, warnings = load_config([ConfigLayer(f"layer{i}", t) for i, t in enumerate(texts)])
    assert isinstance(config, Config)
    assert all(isinstance(w, str) for w in warnings)


@FUZZ
@given(st.sampled_from(BOOL_OPTIONS), st.lists(st.one_of(st.none(), bool_words), min_size=1, max_size=4))
def test_config_last_valid_value_wins_option_by_option(
    option: tuple[str, str], values: list[str | None]
) -> None:
    from guestagent.domain.values import parse_bool

    section, name = option
    layers = []
    want = getattr(getattr(Config(), section), name)
    for i, value in enumerate(values):
        text = f"[{section}]\n" + (f"{name} = {value}\n" if value is not None else "other_unknown = 1\n")
        layers.append(ConfigLayer(f"layer{i}", text + "[Core]\nplatform = gce\n"))
        if value is not None and parse_bool(value) is not None:
            want = parse_bool(value)
    config, _ = load_config(layers)
    assert getattr(getattr(config, section), name) == want
    assert config.Core.platform == "gce"  # a later layer never resets what it does not name


# ---------------------------------------------------------------- addresses and JSON

ip_texts = st.one_of(
    st.ip_addresses().map(str),
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses().map(str), st.integers(-1, 130)),
    st.text(alphabet=st.sampled_from(list("0123456789abcdef.:/% x")), max_size=45),
)


@FUZZ
@given(ip_texts)
def test_canonical_ip_and_network(text: str) -> None:
    try:
        ip = canonical_ip(text)
    except ValueError:
        ip = None
    if ip is not None:
        assert canonical_ip(ip) == ip
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(canonical_network(ip))
    try:
        network = canonical_network(text)
    except ValueError:
        return
    assert canonical_network(network) == network
    assert str(ipaddress.ip_network(network)) == network


@FUZZ
@given(st.one_of(st.text(max_size=20), st.binary(min_size=6, max_size=6).map(lambda b: b.hex(":"))))
def test_canonical_mac(text: str) -> None:
    try:
        mac = canonical_mac(text)
    except ValueError:
        return
    assert canonical_mac(mac) == mac and len(mac) == 17


@FUZZ
@given(
    st.one_of(
        json_values.map(json.dumps),
        st.text(max_size=100),
        st.integers(0, 200).map(lambda n: "[" * n + "]" * n),
    )
)
def test_json_is_depth_bound_and_refused_with_its_own_error(text: str) -> None:
    try:
        value = loads(text)
    except JsonRefused:
        return
    assert nesting_depth(text) <= MAX_DEPTH
    assert json.loads(text) == value or value != value  # NaN never equals itself


# ---------------------------------------------------------------- GCE


def gce_document(
    instance_attrs: dict[str, Any], project_attrs: dict[str, Any], **instance: Any
) -> dict[str, Any]:
    return {
        "instance": {
            "id": 4520031799277581759,
            "hostname": "vm.c.p.internal",
            "attributes": instance_attrs,
            "networkInterfaces": [
                {
                    "mac": "42:01:0a:80:00:02",
                    "ip": "10.128.0.2",
                    "forwardedIps": ["10.0.0.1"],
                    "ipAliases": ["10.8.0.0/24"],
                }
            ],
            "virtualClock": {"driftToken": "0"},
            **instance,
        },
        "project": {"projectId": "p", "numericProjectId": 1, "attributes": project_attrs},
    }


ssh_keys_values = st.lists(st.tuples(names, key_texts), max_size=5).map(
    lambda pairs: "\n".join(f"{u}:{k}" for u, k in pairs)
)
gce_attrs = st.dictionaries(
    st.sampled_from(
        [
            "ssh-keys",
            "sshKeys",
            "block-project-ssh-keys",
            "enable-oslogin",
            "startup-script",
            "startup-script-url",
            "user-data",
            "other",
        ]
    ),
    st.one_of(ssh_keys_values, json_values),
    max_size=5,
)
# Every path of the document above, for replacing one field by any JSON value.
GCE_PATHS = corpus.gce_field_paths(gce_document({"ssh-keys": "x"}, {"ssh-keys": "y"}))


@FUZZ
@given(gce_attrs, gce_attrs, st.sampled_from(GCE_PATHS), json_values)
def test_gce_parser(
    instance_attrs: dict[str, Any], project_attrs: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    for document in (
        gce_document(instance_attrs, project_attrs),
        corpus.with_value(gce_document(instance_attrs, project_attrs), path, value),
    ):
        try:
            md = parse_gce(document)
        except MetadataError:
            continue
        check_snapshot(md)


@FUZZ
@given(json_values)
def test_gce_parser_on_any_json(document: Any) -> None:
    with contextlib.suppress(MetadataError):
        check_snapshot(parse_gce(document))


# What holds the keys on GCE: the objects on the way to ssh-keys, and ssh-keys itself.
KEY_HOLDERS = [
    ("instance", "attributes"),
    ("project",),
    ("project", "attributes"),
    ("instance", "attributes", "ssh-keys"),
    ("project", "attributes", "ssh-keys"),
]


@FUZZ
@given(st.sampled_from(KEY_HOLDERS), json_values)
def test_gce_a_wrong_type_on_the_way_to_the_keys_never_reads_as_no_keys(
    path: tuple[str, ...], value: Any
) -> None:
    """Replacing what holds the keys by a value of another type: the parser refuses the
    document, or holds accounts, or still has every key. Never "no keys" (that would take
    every managed key away)."""
    base = gce_document({"ssh-keys": f"alice:{ED25519}"}, {"ssh-keys": f"bob:{ED25519_BOB}"})
    original = corpus.kind_of(_get(base, path))
    assume(corpus.kind_of(value) != original)
    try:
        md = parse_gce(corpus.with_value(base, path, value))
    except MetadataError:
        return
    held = md.held("accounts")
    users = {k.user for k in md.ssh_keys}
    lost = {"alice", "bob"} - users
    assert held or not lost, f"{'/'.join(path)} = {value!r} read as: no keys for {sorted(lost)}"


def _get(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


# ---------------------------------------------------------------- EC2

ec2_paths = st.one_of(
    st.sampled_from(
        [
            "",
            "instance-id",
            "local-hostname",
            "hostname",
            "mac",
            KEYS,
            MACS,
            "placement/region",
            "instance-type",
        ]
    ),
    st.integers(0, 3).map(lambda i: f"{KEYS}{i}/openssh-key"),
    st.sampled_from(["device-number", "local-ipv4s", "subnet-ipv4-cidr-block", "ipv6s"]).map(
        lambda f: f"{MACS}0e:49:61:0f:c3:11/{f}"
    ),
    st.text(max_size=20),
)
ec2_values = st.one_of(
    st.sampled_from(
        [
            "i-0123456789abcdef0",
            "0=alice\n1=bob",
            "0e:49:61:0f:c3:11/",
            "10.0.0.5",
            "10.0.0.0/20",
            "ip-10-0-0-5.ec2.internal",
            "0",
            "2600:1f18::1",
        ]
    ),
    key_texts,
    st.text(max_size=60),
)


@FUZZ
@given(
    st.dictionaries(ec2_paths, ec2_values, max_size=10),
    st.one_of(st.none(), st.binary(max_size=50)),
    st.one_of(st.none(), json_values.map(json.dumps), st.text(max_size=40)),
)
def test_ec2_parser(meta: dict[str, str], user_data: bytes | None, identity: str | None) -> None:
    for fetched in (
        Ec2Fetched(meta, user_data, identity),
        Ec2Fetched(
            {
                **meta,
                "instance-id": "i-0abc",
                KEYS: "0=k\n1=j",
                f"{KEYS}0/openssh-key": meta.get("x", ED25519),
            },
            user_data,
            identity,
        ),
    ):
        try:
            md = parse_ec2(fetched)
        except Ec2MetadataError:
            continue
        check_snapshot(md)
        assert all(k.user is None for k in md.ssh_keys)


# ---------------------------------------------------------------- NoCloud

nocloud_meta = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"instance-id": st.one_of(st.text(max_size=20), json_values, st.just("iid-1"))},
        optional={
            "local-hostname": st.one_of(st.text(max_size=30), json_values),
            "public-keys": st.one_of(
                key_texts,
                st.lists(key_texts, max_size=4),
                st.dictionaries(st.text(max_size=8), st.one_of(key_texts, json_values), max_size=3),
                json_values,
            ),
        },
    ),
)
nocloud_data = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.builds(Unreadable, st.text(max_size=20)),
    json_values,
)


@FUZZ
@given(
    nocloud_meta,
    nocloud_data,
    nocloud_data,
    st.one_of(json_values, st.builds(Unreadable, st.text(max_size=20))),
)
def test_nocloud_parser(meta: Any, user_data: Any, vendor_data: Any, network: Any) -> None:
    try:
        md = parse_nocloud(meta, user_data=user_data, vendor_data=vendor_data, network_config=network)
    except NoCloudError:
        return
    check_snapshot(md)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "ds=nocloud",
                    "ds=nocloud-net;s=http://x/",
                    "quiet",
                    "ds=nocloud;i=a;h=b",
                    "'ds=nocloud;s=/seed/'",
                    "ds=NoCloud;seedfrom=x",
                ]
            ),
            st.text(max_size=30),
        ),
        max_size=6,
    )
)
def test_nocloud_kernel_command_line(words: list[str]) -> None:
    seed = cmdline_seed(" ".join(words))
    if seed is not None:
        assert seed.ds in ("nocloud", "nocloud-net")
        assert all(isinstance(v, str) for v in seed.overrides().values())


# ---------------------------------------------------------------- every other platform parser


def _own_errors(module: types.ModuleType) -> tuple[type[BaseException], ...]:
    return tuple(
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ValueError) and obj.__module__ == module.__name__
    )


def _discovered() -> list[tuple[str, Callable[..., Any], tuple[type[BaseException], ...], types.ModuleType]]:
    out = []
    for info in pkgutil.iter_modules(platforms_pkg.__path__):
        module = importlib.import_module(f"{platforms_pkg.__name__}.{info.name}")
        parse = getattr(module, f"parse_{info.name}", None)
        if callable(parse):
            out.append((info.name, parse, _own_errors(module), module))
    return out


# gce, ec2 and nocloud have properties of their own above, with their wire formats' shapes.
TAILORED = {"gce", "ec2", "nocloud"}
PARSERS = [p for p in _discovered() if p[0] not in TAILORED]


def _strategy_for(hint: Any, module: types.ModuleType, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of a parser's input type: its own attrs classes field by field, bytes that are
    often JSON, mappings of text, anything JSON for `object`."""
    origin = typing.get_origin(hint)
    if hint is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_strategy_for(arg, module, depth) for arg in typing.get_args(hint)])
    if hint is bytes:
        return st.one_of(
            st.binary(max_size=60),
            json_values.map(lambda v: json.dumps(v).encode()),
            key_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
        )
    if hint is str:
        return st.one_of(st.text(max_size=40), key_texts)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-5, 2**40)
    if origin in (Mapping, dict, typing.Mapping) or hint in (Mapping, dict):
        args = typing.get_args(hint) or (str, object)
        return st.dictionaries(
            st.one_of(st.sampled_from(_KNOWN_KEYS), st.text(max_size=12)),
            _strategy_for(args[1], module, depth + 1),
            max_size=6,
        )
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis] or [object]
        return st.lists(_strategy_for(args[0], module, depth + 1), max_size=3).map(
            tuple if origin is tuple else list
        )
    if attrs.has(hint) and depth < 3:
        hints = typing.get_type_hints(hint, vars(module))
        fields = {
            f.name: _strategy_for(hints[f.name], module, depth + 1) for f in attrs.fields(hint) if f.init
        }
        return st.builds(hint, **fields)
    return json_values


# Names the parsers look up in their inputs, so mappings sometimes hold what they read.
_KNOWN_KEYS = [
    "uuid",
    "instance-id",
    "hostname",
    "name",
    "public_keys",
    "public-keys",
    "keys",
    "droplet_id",
    "sdc:uuid",
    "root_authorized_keys",
    "user-script",
    "interfaces",
    "network",
    "meta",
    "compute",
    "osProfile",
    "local-hostname",
    "sdc:nics",
    "ssh_keys",
    "vendor_data",
    "user_data",
]


def _inputs(
    name: str, parse: Callable[..., Any], module: types.ModuleType
) -> st.SearchStrategy[tuple[Any, dict[str, Any]]]:
    signature = inspect.signature(parse)
    hints = typing.get_type_hints(parse, vars(module))
    positional = [p for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    keywords = [p for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
    first = positional[0]
    hint = hints.get(first.name, object)
    if hint is object:
        # `object`: the parser checks for its transport's class; give it that, or anything.
        fetched = [
            obj
            for obj_name, obj in vars(module).items()
            if attrs.has(obj)
            and obj.__module__ == module.__name__
            and obj_name.endswith(("Fetched", "Files"))
        ]
        first_values = st.one_of([json_values, *(_strategy_for(cls, module) for cls in fetched)])
    else:
        first_values = _strategy_for(hint, module)
    extra = {p.name: _strategy_for(hints.get(p.name, object), module) for p in keywords}
    return st.tuples(first_values, st.fixed_dictionaries({}, optional=extra))


@pytest.mark.parametrize(("name", "parse", "errors", "module"), PARSERS, ids=[p[0] for p in PARSERS])
def test_every_platform_parser_returns_a_safe_snapshot_or_its_own_error(
    name: str, parse: Callable[..., Any], errors: tuple[type[BaseException], ...], module: types.ModuleType
) -> None:
    assert errors, f"guestagent.domain.platforms.{name} defines no ValueError of its own"

    @FUZZ
    @given(_inputs(name, parse, module))
    def prop(arguments: tuple[Any, dict[str, Any]]) -> None:
        first, keywords = arguments
        try:
            md = parse(first, **keywords)
        except errors:
            return
        check_snapshot(md)

    prop()
