from __future__ import annotations

from guestagent.domain.config import Config, ConfigLayer, layer_paths, load_config, options


def layers(distro: str = "", template: str = "", main: str = "") -> list[ConfigLayer]:
    return [
        ConfigLayer("cfg.distro", distro),
        ConfigLayer("cfg.template", template),
        ConfigLayer("cfg", main),
    ]


def test_defaults_match_the_reference_agents() -> None:
    config, warnings = load_config([])
    assert warnings == ()
    assert config.Accounts.groups == ("adm", "dip", "docker", "lxd", "plugdev", "video")
    assert config.IpForwarding.ethernet_proto_id == 66
    assert config.InstanceSetup.host_key_types == ("ecdsa", "ed25519", "rsa")
    assert config.MetadataScripts.default_shell == "/bin/bash"
    assert config.Accounts.deprovision_remove is False


def test_user_file_beats_template_beats_distro() -> None:
    config, _ = load_config(
        layers(
            distro="[Accounts]\ngroups = wheel\ndeprovision_remove = true\n[IpForwarding]\nethernet_proto_id = 77\n",
            template="[Accounts]\ngroups = adm,video\n",
            main="[IpForwarding]\nethernet_proto_id = 99\n",
        )
    )
    assert config.Accounts.groups == ("adm", "video")  # template over distro
    assert config.Accounts.deprovision_remove is True  # only distro set it
    assert config.IpForwarding.ethernet_proto_id == 99  # main over distro


def test_layer_files_are_named_beside_the_main_file() -> None:
    assert layer_paths("/etc/default/instance_configs.cfg") == [
        "/etc/default/instance_configs.cfg.distro",
        "/etc/default/instance_configs.cfg.template",
        "/etc/default/instance_configs.cfg",
    ]


def test_unknown_options_and_bad_values_are_reported_not_fatal() -> None:
    config, warnings = load_config(
        layers(
            distro="[Daemons]\naccounts_daemon = false\n",
            main="[Daemons]\naccounts_daemon = sometimes\nnonsense = 1\n[Nope]\nx = 1\n",
        )
    )
    assert config.Daemons.accounts_daemon is False  # the bad value keeps the lower layer's
    assert warnings == (
        "cfg: [Daemons] accounts_daemon: expected true or false, got 'sometimes'; ignored",
        "cfg: unknown option [Daemons] nonsense",
        "cfg: unknown section [Nope]",
    )


def test_a_broken_file_is_skipped_with_a_warning() -> None:
    config, warnings = load_config(layers(main="this is not ini\n[Accounts\n"))
    assert config == Config()
    assert len(warnings) == 1 and "not a valid INI file" in warnings[0]


def test_booleans_accept_the_usual_spellings() -> None:
    for word, value in [("TRUE", True), ("yes", True), ("1", True), ("False", False), ("off", False)]:
        config, _ = load_config(layers(main=f"[Accounts]\ndeprovision_remove = {word}\n"))
        assert config.Accounts.deprovision_remove is value


def test_every_seed_option_is_known() -> None:
    known = {(o.section, o.option) for o in options()}
    seed = (
        {
            ("Accounts", n)
            for n in [
                "deprovision_remove",
                "groups",
                "useradd_cmd",
                "userdel_cmd",
                "usermod_cmd",
                "gpasswd_add_cmd",
                "gpasswd_remove_cmd",
                "groupadd_cmd",
            ]
        }
        | {
            ("Daemons", n)
            for n in ["accounts_daemon", "clock_skew_daemon", "ip_forwarding_daemon", "network_daemon"]
        }
        | {
            ("InstanceSetup", n)
            for n in [
                "host_key_types",
                "optimize_local_ssd",
                "network_enabled",
                "set_boto_config",
                "set_host_keys",
                "set_multiqueue",
            ]
        }
        | {("IpForwarding", n) for n in ["ethernet_proto_id", "ip_aliases", "target_instance_ips"]}
        | {("MetadataScripts", n) for n in ["default_shell", "run_dir", "startup", "shutdown"]}
        | {("NetworkInterfaces", n) for n in ["setup", "ip_forwarding", "dhcp_command"]}
    )
    assert seed <= known
    assert all(o.doc for o in options())


def test_reference_doc_matches_the_code() -> None:
    from pathlib import Path

    from guestagent.domain.config import render_reference

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert render_reference() in doc, "docs/configuration.md is stale: paste `guestagent config --reference`"


def test_every_option_has_an_example_that_parses_cleanly() -> None:
    for opt in options():
        name = opt.example.partition(" = ")[0]
        assert name == opt.option
        _, warnings = load_config([ConfigLayer("x", f"[{opt.section}]\n{opt.example}\n")])
        assert warnings == (), opt
