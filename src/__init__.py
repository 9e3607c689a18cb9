"""guestagent: a guest agent for Linux VMs."""
