defmodule ServeEx.SignalHandler do
  @moduledoc """
  SIGHUP makes the model registry look at the model directory again (a hot swap without
  waiting for the next poll). Installed beside OTP's own handler of `:erl_signal_server`,
  which keeps handling SIGTERM (the drain) as before.
  """
  @behaviour :gen_event

  @doc "Routes SIGHUP to this handler (idempotent)."
  @spec install() :: :ok
  def install do
    :os.set_signal(:sighup, :handle)

    if __MODULE__ not in :gen_event.which_handlers(:erl_signal_server),
      do: :ok = :gen_event.add_handler(:erl_signal_server, __MODULE__, [])

    :ok
  end

  @impl true
  def init(_args), do: {:ok, nil}

  @impl true
  def handle_event(:sighup, state) do
    # the registry may be busy loading; it picks the request up when it is free
    spawn(fn -> ServeEx.ModelRegistry.reload() end)
    {:ok, state}
  end

  def handle_event(_signal, state), do: {:ok, state}

  @impl true
  def handle_call(_request, state), do: {:ok, :ok, state}
end
