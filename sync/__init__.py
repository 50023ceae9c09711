"""crewnode peer-to-peer sync: protocol, HTTPS transport, LAN discovery, bundles."""
