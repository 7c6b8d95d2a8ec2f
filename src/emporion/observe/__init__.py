"""What the operator sees of every call: stages on the request path (pipeline/stages.py) that
record it off the path — the request log, metrics."""
