"""One pure parser per platform: its wire format in, the neutral InstanceMetadata out."""
