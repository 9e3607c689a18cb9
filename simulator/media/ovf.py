"""Azure provisioning DVD: `ovf-env.xml` (OVF environment with a
LinuxProvisioningConfigurationSet) on an ISO9660 volume (`azure-ovf`), or on a
UDF-only volume as Azure's own DVD is (`azure-ovf-udf`).

Keys go in as `SSH/PublicKeys/PublicKey` with `Path` and `Value` (the
key text); Azure's own fingerprint-only form needs the fabric's certificate
store, which the simulator does not model.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from xml.sax.saxutils import escape

import pycdlib

from ..scenario import Scenario
from .iso import build_iso

LABEL = "rd_rdfe_stable"


def ovf_env(scn: Scenario) -> str:
    admin = scn.admin_user
    user = admin.name if admin else "azureuser"
    keys = "".join(
        "<PublicKey><Fingerprint></Fingerprint>"
        f"<Path>/home/{escape(user)}/.ssh/authorized_keys</Path>"
        f"<Value>{escape(k.authorized_line())}</Value></PublicKey>"
        for k in (admin.keys if admin else ()))
    password = (f"<UserPassword>{escape(admin.password)}</UserPassword>"
                if admin and admin.password else "")
    disable = "false" if admin and admin.password else "true"
    custom = ""
    if scn.user_data is not None:
        custom = f"<CustomData>{base64.b64encode(scn.user_data.encode()).decode()}</CustomData>"
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" '
        'xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" '
        'xmlns:wa="http://schemas.microsoft.com/windowsazure" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
        '<wa:ProvisioningSection><wa:Version>1.0</wa:Version>\n'
        '<LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
        '<ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>\n'
        f"<HostName>{escape(scn.short_hostname)}</HostName>\n"
        f"<UserName>{escape(user)}</UserName>{password}\n"
        f"<DisableSshPasswordAuthentication>{disable}</DisableSshPasswordAuthentication>\n"
        f"<SSH><PublicKeys>{keys}</PublicKeys><KeyPairs></KeyPairs></SSH>\n"
        f"{custom}\n"
        "</LinuxProvisioningConfigurationSet>\n"
        "</wa:ProvisioningSection>\n"
        '<wa:PlatformSettingsSection><wa:Version>1.0</wa:Version>\n'
        '<PlatformSettings xmlns="http://schemas.microsoft.com/windowsazure" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
        "<KmsServerHostname>kms.core.windows.net</KmsServerHostname>\n"
        "<ProvisionGuestAgent>true</ProvisionGuestAgent>\n"
        '<GuestAgentPackageName i:nil="true" />\n'
        "<PreprovisionedVm>false</PreprovisionedVm>\n"
        "</PlatformSettings>\n"
        "</wa:PlatformSettingsSection>\n"
        "</Environment>\n"
    )


def build_ovf_iso(scn: Scenario, out: Path) -> Path:
    return build_iso({"ovf-env.xml": ovf_env(scn).encode()}, out, LABEL)


SECTOR = 2048
_VRS_FIRST = 16
_UDF_VRS = (b"BEA01", b"NSR02", b"NSR03", b"TEA01")


def build_ovf_udf(scn: Scenario, out: Path) -> Path:
    """The DVD as Azure attaches it: UDF only (blkid: TYPE="udf"), ovf-env.xml in the root.

    pycdlib writes an ISO9660/UDF bridge; the ISO9660 volume descriptors are then
    taken out of the volume recognition sequence (BEA01, NSR02, TEA01 moved up to
    sector 16), so readers and the kernel see UDF and nothing else.
    """
    data = ovf_env(scn).encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, udf="2.60")
    iso.add_fp(io.BytesIO(data), len(data), udf_path="/ovf-env.xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    iso.write_fp(buf)
    iso.close()
    image = bytearray(buf.getvalue())
    sectors = range(_VRS_FIRST, _VRS_FIRST + 8)
    udf = [bytes(image[s * SECTOR:(s + 1) * SECTOR]) for s in sectors
           if bytes(image[s * SECTOR + 1:s * SECTOR + 6]) in _UDF_VRS]
    if [block[1:6] for block in udf][:1] != [b"BEA01"]:
        raise RuntimeError("pycdlib wrote no UDF volume recognition sequence")
    for s in sectors:
        image[s * SECTOR:(s + 1) * SECTOR] = bytes(SECTOR)
    for i, block in enumerate(udf):
        s = _VRS_FIRST + i
        image[s * SECTOR:(s + 1) * SECTOR] = block
    out.write_bytes(bytes(image))
    return out
