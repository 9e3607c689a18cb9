"""The NIST curves of ecdsa-sha2-* keys, enough to check a public point as OpenSSH does.

OpenSSH refuses an ECDSA key whose point is not on its curve, or whose
coordinates are implausibly small or not below the group order; a key that
sshd would refuse must not create an account, so the same checks run here.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Curve:
    p: int  # the field prime
    b: int  # y^2 = x^3 - 3x + b
    n: int  # the group order


CURVES = {
    "nistp256": Curve(
        p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    "nistp384": Curve(
        p=2**384 - 2**128 - 2**96 + 2**32 - 1,
        b=0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
        n=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ),
    "nistp521": Curve(
        p=2**521 - 1,
        b=0x0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF109E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00,
        n=0x01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409,
    ),
}


def ec_point_is_valid(curve_name: str, point: bytes) -> bool:
    """An uncompressed point (0x04 || X || Y) that OpenSSH would accept as a public key."""
    curve = CURVES.get(curve_name)
    if curve is None:
        return False
    size = (curve.p.bit_length() + 7) // 8
    if len(point) != 1 + 2 * size or point[0] != 4:
        return False
    x = int.from_bytes(point[1 : 1 + size], "big")
    y = int.from_bytes(point[1 + size :], "big")
    half = curve.n.bit_length() // 2
    if x.bit_length() <= half or y.bit_length() <= half:
        return False
    if x >= curve.n - 1 or y >= curve.n - 1:
        return False
    # On the curve; the group's cofactor is 1, so that also puts it in the subgroup.
    return (y * y - (x * x * x - 3 * x + curve.b)) % curve.p == 0
