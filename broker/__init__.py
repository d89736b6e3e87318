"""Broker side: Mosquitto configs, a private Mosquitto launcher, and the bus surface."""
