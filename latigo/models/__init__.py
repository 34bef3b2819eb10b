"""Model providers: Gordo (the production server), local scikit-learn models, and model catalogs."""
