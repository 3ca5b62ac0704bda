"""Task data and scoring: tokenised task datasets (classification, pairs, NER, regression), extractive QA
windows and decoding, metrics. A new task type goes here."""
