"""Running a model: the prepared (analysed, split, cached) model, its onnxruntime sessions, and the
inputs made from text (tokenizer, graph-input roles, pooling declared beside the model)."""
