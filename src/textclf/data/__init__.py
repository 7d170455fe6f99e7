"""Raw data: reading tables, the one normalization, and the prepare stage."""
