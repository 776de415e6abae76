"""Naive instance-level DPO: a correct and a wrong whole answer of the same question make a pair."""
