"""Runnable examples, also importable as ``agentflow.examples`` (``agentflow demo`` runs the support agent).

Each example runs offline against the fake model by default; ``--model`` runs it against a real one.
"""
