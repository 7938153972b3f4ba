defmodule ServeEx.Native do
  @moduledoc false
  # Stubs of the NIF in infer_rs/nif (crate infer_nif); `make nif`
  # copies the library into priv/native/. See ServeEx.Engine for the public API.
  @on_load :load_nif

  def load_nif do
    path = :filename.join(:code.priv_dir(:serve_ex), ~c"native/libinfer_nif")
    :erlang.load_nif(path, 0)
  end

  def set_threads(_n), do: :erlang.nif_error(:nif_not_loaded)
  def engine_info, do: :erlang.nif_error(:nif_not_loaded)
  def model_load(_path), do: :erlang.nif_error(:nif_not_loaded)
  def model_generate_batch(_model, _requests), do: :erlang.nif_error(:nif_not_loaded)
  def model_generate_batch_inline(_model, _requests), do: :erlang.nif_error(:nif_not_loaded)
  def model_decode_batch(_model, _inputs), do: :erlang.nif_error(:nif_not_loaded)
  def model_decode_batch_inline(_model, _inputs), do: :erlang.nif_error(:nif_not_loaded)
  def model_encode_batch(_model, _inputs), do: :erlang.nif_error(:nif_not_loaded)
  def model_encode_batch_inline(_model, _inputs), do: :erlang.nif_error(:nif_not_loaded)
  def model_generate_text_batch(_model, _requests), do: :erlang.nif_error(:nif_not_loaded)
  def batch_new(_model, _limits), do: :erlang.nif_error(:nif_not_loaded)

  def batch_join(_batch, _prompt, _max_new_tokens, _temperature, _top_k, _seed),
    do: :erlang.nif_error(:nif_not_loaded)

  def batch_step(_batch), do: :erlang.nif_error(:nif_not_loaded)
  def batch_leave(_batch, _id), do: :erlang.nif_error(:nif_not_loaded)
  def batch_len(_batch), do: :erlang.nif_error(:nif_not_loaded)
end
