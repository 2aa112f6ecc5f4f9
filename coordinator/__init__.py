"""The TensorGrid coordinator: api → kinds → services → repositories → db, composed by app."""
