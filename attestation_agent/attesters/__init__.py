"""TEE attesters: one per platform behind one interface (see ``base``)."""
