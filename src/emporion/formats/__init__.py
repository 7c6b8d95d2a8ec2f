"""Translations between wire formats, each in one module that every caller shares: the ingress
that speaks a format to clients and the adapter that speaks it to upstreams use the same code, so
the two directions cannot disagree."""
