"""The verifier: final-answer extraction and comparison for GSM8K-style numbers and MATH expressions; one grader
for online learning, baseline sampling, trace filtering and `harness grade`."""
