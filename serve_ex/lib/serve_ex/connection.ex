defmodule ServeEx.Connection do
  @moduledoc """
  Owns the broker connection: connects at start without blocking the supervisor,
  declares the topology, watches the connection, and reconnects with jittered
  exponential backoff (100 ms doubling to 5 s, each wait drawn from 50-150 %) when the
  broker is down or the connection dies. Others ask it for channels.
  """
  use GenServer
  require Logger

  alias ServeEx.AMQP

  @first_backoff_ms 100
  @max_backoff_ms 5_000

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    opts = Keyword.validate!(opts, [:url, :queue, :amqp, name: __MODULE__])
    GenServer.start_link(__MODULE__, opts, name: opts[:name])
  end

  @doc "A new channel on the current connection."
  @spec open_channel(GenServer.server()) :: {:ok, AMQP.chan()} | {:error, :not_connected | term()}
  def open_channel(server \\ __MODULE__), do: GenServer.call(server, :open_channel)

  @doc """
  What the broker shows as the name of the connection that the `ServeEx.Connection`
  registered as `name` opens from this node.

      iex> ServeEx.Connection.connection_name(ServeEx.ReplyConnection)
      "ServeEx.ReplyConnection on nonode@nohost"
  """
  @spec connection_name(atom()) :: String.t()
  def connection_name(name), do: "#{inspect(name)} on #{node()}"

  @doc "Whether the broker is connected."
  @spec connected?(GenServer.server()) :: boolean()
  def connected?(server \\ __MODULE__) do
    GenServer.call(server, :connected?, 1_000)
  catch
    :exit, _ -> false
  end

  @impl true
  def init(opts) do
    # The connection is linked: when this process dies, so does the connection, and
    # with it every channel, so the broker requeues whatever was in flight.
    Process.flag(:trap_exit, true)
    send(self(), :connect)

    {:ok,
     %{
       name: opts[:name],
       amqp: Keyword.fetch!(opts, :amqp),
       url: opts[:url],
       queue: opts[:queue],
       conn: nil,
       backoff: @first_backoff_ms
     }}
  end

  @impl true
  def handle_call(:open_channel, _from, %{conn: nil} = state),
    do: {:reply, {:error, :not_connected}, state}

  def handle_call(:open_channel, _from, state),
    do: {:reply, state.amqp.open_channel(state.conn), state}

  def handle_call(:connected?, _from, state), do: {:reply, state.conn != nil, state}

  @impl true
  def handle_info(:connect, state) do
    case state.amqp.connect(state.url, connection_name(state.name)) do
      {:ok, conn} ->
        case prepare(state.amqp, conn, state.queue) do
          :ok ->
            Logger.info("#{inspect(state.name)} connected; queue #{state.queue} declared")
            Process.link(conn)
            {:noreply, %{state | conn: conn, backoff: @first_backoff_ms}}

          error ->
            state.amqp.close_connection(conn)
            retry(state, error)
        end

      error ->
        retry(state, error)
    end
  end

  def handle_info({:EXIT, conn, reason}, %{conn: conn} = state) do
    Logger.warning("broker connection lost: #{inspect(reason)}; reconnecting")
    send(self(), :connect)
    {:noreply, %{state | conn: nil}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  # Declares the topology and learns the broker's direct reply-to node.
  defp prepare(amqp, conn, queue) do
    with {:ok, chan} <- amqp.open_channel(conn),
         :ok <- amqp.declare_topology(chan, queue),
         :ok <- amqp.close_channel(chan),
         {:ok, node} <- amqp.direct_reply_node(conn) do
      ServeEx.ReplyTo.put_direct_node(node)
    end
  end

  defp retry(state, error) do
    wait = jittered(state.backoff)
    Logger.warning("broker unavailable (#{inspect(error, limit: 5)}); retrying in #{wait} ms")
    Process.send_after(self(), :connect, wait)
    {:noreply, %{state | backoff: min(state.backoff * 2, @max_backoff_ms)}}
  end

  @impl true
  def terminate(_reason, %{conn: conn} = state) when conn != nil do
    state.amqp.close_connection(conn)
  end

  def terminate(_reason, _state), do: :ok

  defp jittered(ms), do: div(ms, 2) + :rand.uniform(ms)
end
