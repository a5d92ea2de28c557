"""Seamless-wallet gateway: the provider's signed callbacks on an atomic Redis hot wallet."""
