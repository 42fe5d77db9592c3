"""One optimizer step of the policy: micro-batches of whole groups, importance sampling, the KL term, metrics."""
