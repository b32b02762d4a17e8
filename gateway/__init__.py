"""Mobile gateways, sessions, traffic control, mass-traffic interruption, GTP pcap, MQTT."""
