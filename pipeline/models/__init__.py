"""Models in and out of transformers: loading and building students, architecture differences, hub ids,
the BiLSTM student, packaged teachers (import-teacher). A new architecture or packaged teacher goes here."""
