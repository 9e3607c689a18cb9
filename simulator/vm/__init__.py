"""The VM harness: build a Debian guest image with the agent's .deb and boot it under QEMU.

The guest reaches the simulator only through QEMU's user-mode network
(`restrict=on` plus a `guestfwd` for 169.254.169.254:80), so the metadata
address never exists in this machine's own network namespace.
"""
