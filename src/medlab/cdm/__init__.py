"""OMOP CDM v5.4 node stores: schema, loading, fingerprints and data quality."""
