"""The evidence trail: Merkle transparency log, keys and signatures, evidence bundles."""
