"""Training: arguments, the DiT-with-frozen-encoders wrapper, frame masks, and the paddlenlp Trainer."""
