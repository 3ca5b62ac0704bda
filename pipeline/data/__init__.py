"""Text in: raw corpora (streamed or prepared), Chinese data from pip packages, character vocabularies and
vocabulary pruning, dataset files, masking, BIO tags. A new data source goes here."""
