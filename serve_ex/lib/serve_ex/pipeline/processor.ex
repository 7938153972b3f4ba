defmodule ServeEx.Pipeline.Processor do
  @moduledoc """
  `handle_message`: decodes and validates a request (`ServeEx.Request`), then passes it
  to its model's batcher. An invalid request is answered with an error reply right
  away. A crash while handling becomes a failed message (see
  `ServeEx.Pipeline.Acknowledger`), logged once; the processor lives on.
  """
  use GenServer
  require Logger

  alias ServeEx.{ModelRegistry, Reply, Request}
  alias ServeEx.Pipeline.{Acknowledger, Batcher}

  @spec start_link(non_neg_integer()) :: GenServer.on_start()
  def start_link(index), do: GenServer.start_link(__MODULE__, index, name: name(index))

  @spec child_spec(non_neg_integer()) :: Supervisor.child_spec()
  def child_spec(index), do: %{id: {__MODULE__, index}, start: {__MODULE__, :start_link, [index]}}

  @doc "Hands `message` to processor `index`."
  @spec handle(non_neg_integer(), ServeEx.Message.t()) :: :ok
  def handle(index, message), do: GenServer.cast(name(index), {:message, message})

  defp name(index), do: {:via, Registry, {ServeEx.Pipeline.Registry, {:processor, index}}}

  @impl true
  def init(index), do: {:ok, index}

  @impl true
  def handle_cast({:message, message}, index) do
    try do
      handle_message(message)
    rescue
      error ->
        Logger.error("processor #{index} failed on a message: #{Exception.message(error)}")
        Acknowledger.settle([{message, {:failed, Exception.message(error)}}])
    end

    {:noreply, index}
  end

  @doc "Validates one message and routes it: to a batcher, or straight to a reply."
  @spec handle_message(ServeEx.Message.t()) :: :ok
  def handle_message(%{reply_to: nil} = message) do
    Acknowledger.settle([{message, {:dead, "the request has no reply_to property"}}])
  end

  def handle_message(message) do
    case Request.parse(message.payload, &ModelRegistry.lookup/1) do
      {:ok, request} ->
        Batcher.add(%{message | request: request, model_id: request.model.id})

      {:error, code, text} ->
        Acknowledger.settle([{message, {:reply, Reply.error(code, text), code}}])
    end
  end
end
