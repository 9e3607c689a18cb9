"""Real public keys made with ssh-keygen for the tests (public halves only)."""

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMxb0LNQrd/Z1t1fJBEcjD6SOk5sbkxedozey/PW8b5q ed25519@example"
ED25519_BOB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqhMMDjKiHa0eV1aJ8KRUEEYL82M8WpxghbfuSI94sC bob"
ECDSA = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDd9+0bJetkQvvHEP7g8l3I7HtEP4YHH"
    "av4Yw6NBeH3YVkaH5VED+LpJTb3swNOL1NIcK6+5zAf6lHdm1ZRAxKE= ecdsa@example"
)
RSA = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDFA4/VvL0t1rGB+xpqMnFGY8nxKtdfzEp+nIdTDJraaUc0kVb5iVHuBU5K7qSm8oz0"
    "xBr/4MSxhizgExTHHAVXjxqdPnAGbc0gZxJfp6jm/aGTBI/xC+xNc7y5cYKsXr5XmyTqa1hCKA0RfctDEJDtprxys5yF9NafgJleteuc"
    "k7w/c/bZtfqwxVJcaH96RPHWHjVIq99+EbdHYU5eJ2zscDN4+tRREl0dy6hc/vrctw2kBfx7VNQMUuYdmNUGngXYPgzB//vlc5+Z3wsl"
    "K4bUW1UE3M8PjdsfDhy+m/V6I/4GhBUuOf5SFwE5QoF/AeaiEH+K74UMcXAjPR/YpILr rsa@example"
)
