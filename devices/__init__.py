"""SIM cards (PIN/PUK), device and modem behaviour, coverage, traffic profiles."""
