"""Inference: trained model + ModelSpec -> tumour probabilities for patches, files, folders, stores."""
