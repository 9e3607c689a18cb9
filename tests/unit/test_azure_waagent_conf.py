"""waagent.conf (WALinuxAgent's README sample and variants) into this agent's configuration."""

from __future__ import annotations

from guestagent.domain.config import Config, ConfigLayer, load_config
from guestagent.domain.waagent_conf import insert_waagent, merge_waagent, read_waagent, waagent_layer

# The sample configuration in WALinuxAgent's README.
README_SAMPLE = """\
Extensions.Enabled=y
Extensions.GoalStatePeriod=6
Extensions.GoalStateHistoryCleanupPeriod=1800
Provisioning.Agent=auto
Provisioning.DeleteRootPassword=n
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.SshHostKeyPairType=rsa
Provisioning.MonitorHostName=y
Provisioning.DecodeCustomData=n
Provisioning.ExecuteCustomData=n
Provisioning.PasswordCryptId=6
Provisioning.PasswordCryptSaltLength=10
ResourceDisk.Format=y
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.MountOptions=None
ResourceDisk.EnableSwap=n
ResourceDisk.EnableSwapEncryption=n
ResourceDisk.SwapSizeMB=0
Logs.Verbose=n
Logs.Collect=y
Logs.CollectPeriod=3600
OS.AllowHTTP=n
OS.RootDeviceScsiTimeout=300
OS.EnableFIPS=n
OS.OpensslPath=None
OS.SshClientAliveInterval=180
OS.SshDir=/etc/ssh
HttpProxy.Host=None
HttpProxy.Port=None
"""


def test_readme_sample_maps_to_the_defaults_it_documents() -> None:
    config, warnings = merge_waagent(Config(), README_SAMPLE)
    assert config.Azure.provisioning is True
    assert config.Azure.delete_root_password is False
    assert config.InstanceSetup.set_host_keys is True
    assert config.InstanceSetup.host_key_types == ("rsa",)
    assert config.Azure.monitor_hostname is True
    assert config.Azure.decode_custom_data is False
    assert config.FirstBoot.run_user_data is False
    assert (config.Azure.password_crypt_id, config.Azure.password_crypt_salt_length) == ("6", 10)
    disk = config.ResourceDisk
    assert (disk.format, disk.filesystem, disk.mount_point, disk.mount_options) == (
        True,
        "ext4",
        "/mnt/resource",
        "",
    )
    assert (disk.enable_swap, disk.swap_size_mb) == (False, 0)
    assert (config.Azure.ssh_client_alive_interval, config.Azure.ssh_dir) == (180, "/etc/ssh")
    assert config.Azure.http_proxy == ""
    assert config.Azure.verbose is False
    # WALinuxAgent's own machinery: one line naming what has no effect, nothing else.
    [line] = warnings
    assert "no effect" in line
    for name in ("Extensions.Enabled", "Logs.Collect", "OS.EnableFIPS", "ResourceDisk.EnableSwapEncryption"):
        assert name in line


def test_changed_values_and_the_proxy() -> None:
    text = (
        "Provisioning.Agent=cloud-init\nProvisioning.DeleteRootPassword=y\nProvisioning.ExecuteCustomData=y\n"
        "Provisioning.DecodeCustomData=y\nProvisioning.PasswordCryptId=5\nProvisioning.SshHostKeyPairType=auto\n"
        "Provisioning.MonitorHostNamePeriod=60\nResourceDisk.EnableSwap=y\nResourceDisk.SwapSizeMB=2048\n"
        'ResourceDisk.MountOptions="nodev,nosuid"\nHttpProxy.Host=proxy.corp\nHttpProxy.Port=8080\nLogs.Verbose=y\n'
    )
    config, warnings = merge_waagent(Config(), text)
    assert warnings == ()
    assert config.Azure.provisioning is False
    assert config.Azure.delete_root_password is True
    assert config.FirstBoot.run_user_data is True
    assert config.Azure.decode_custom_data is True
    assert config.Azure.password_crypt_id == "5"
    assert config.InstanceSetup.host_key_types == ("ecdsa", "ed25519", "rsa")
    assert config.Azure.monitor_hostname_period == 60.0
    assert (config.ResourceDisk.enable_swap, config.ResourceDisk.swap_size_mb) == (True, 2048)
    assert config.ResourceDisk.mount_options == "nodev,nosuid"
    assert config.Azure.http_proxy == "http://proxy.corp:8080"
    assert config.Azure.verbose is True


def test_unknown_options_and_bad_values_are_reported_and_ignored() -> None:
    text = (
        "# comment\n\nProvisioning.DeleteRootPassword=maybe\nNo.Such.Option=1\nnot a setting\n"
        "Provisioning.SshHostKeyPairType=dsa\nResourceDisk.MountPoint=relative/path\nProvisioning.Enabled=n\n"
        "HttpProxy.Port=3128\nResourceDisk.SwapSizeMB=-1\n"
    )
    mapped = read_waagent(text)
    assert mapped.values == {}
    text_of = "\n".join(mapped.warnings)
    for expected in (
        "expected y or n",
        "No.Such.Option: unknown option",
        "not Name=value",
        "dsa",
        "absolute path",
        "removed in WALinuxAgent 2.2.45",
        "HttpProxy.Port without HttpProxy.Host",
        "expected a number >= 0",
    ):
        assert expected in text_of, expected


def test_end_of_line_comments_and_quotes_as_walinuxagent_reads_them() -> None:
    mapped = read_waagent('ResourceDisk.Filesystem="xfs" # faster\nOS.SshDir=/etc/ssh\n')
    assert mapped.values[("ResourceDisk", "filesystem")] == "xfs"


def test_layer_sits_between_distro_and_the_users_files() -> None:
    distro = ConfigLayer(
        "/etc/default/instance_configs.cfg.distro", "[ResourceDisk]\nfilesystem = ext3\nswap_size_mb = 1\n"
    )
    user = ConfigLayer("/etc/default/instance_configs.cfg", "[ResourceDisk]\nswap_size_mb = 4096\n")
    waagent = "ResourceDisk.Filesystem=xfs\nResourceDisk.SwapSizeMB=512\nResourceDisk.EnableSwap=y\n"
    layers, warnings = insert_waagent([distro, user], waagent)
    assert [layer.name for layer in layers] == [distro.name, "/etc/waagent.conf", user.name]
    config, load_warnings = load_config(layers)
    assert warnings == () and load_warnings == ()
    # waagent.conf beats the image builder's .distro; the user's own file beats waagent.conf.
    assert config.ResourceDisk.filesystem == "xfs"
    assert config.ResourceDisk.swap_size_mb == 4096
    assert config.ResourceDisk.enable_swap is True


def test_no_waagent_conf_changes_nothing() -> None:
    layers = [ConfigLayer("a", "")]
    assert insert_waagent(layers, None) == (layers, ())


def test_the_layer_is_ini_that_load_config_reads_back() -> None:
    layer, _ = waagent_layer("Provisioning.SshHostKeyPairType=auto\nOS.SshClientAliveInterval=0\n")
    config, warnings = load_config([layer])
    assert warnings == ()
    assert config.InstanceSetup.host_key_types == ("ecdsa", "ed25519", "rsa")
    assert config.Azure.ssh_client_alive_interval == 0


def test_a_huge_file_is_ignored() -> None:
    mapped = read_waagent("Logs.Verbose=y\n" * 100_000)
    assert mapped.values == {} and "larger than" in mapped.warnings[0]
