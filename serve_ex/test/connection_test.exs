defmodule ServeEx.ConnectionTest do
  @moduledoc "A dead broker: the manager keeps retrying with backoff, and reconnects after a loss."
  use ExUnit.Case, async: true
  @moduletag :capture_log
  doctest ServeEx.Connection

  alias ServeEx.AMQP.Fake
  alias ServeEx.Connection

  # each test's manager under its own name, on its own fake broker
  defp start_connection(name, settings \\ []) do
    url = Fake.url(self(), settings)
    start_supervised!({Connection, url: url, queue: "q", name: name, amqp: Fake})
  end

  test "retries while the broker refuses, then connects" do
    start_connection(:refusing_broker, connect_failures: 3)
    refute Connection.connected?(:refusing_broker)
    assert {:error, :not_connected} = Connection.open_channel(:refusing_broker)
    # backoff 100, 200, 400 ms, each jittered to 50-150 %
    assert_receive {:connected, _conn}, 3_000
    assert Connection.connected?(:refusing_broker)
    assert {:ok, _chan} = Connection.open_channel(:refusing_broker)
  end

  test "reconnects when the connection dies" do
    start_connection(:dying_connection)
    assert_receive {:connected, conn}, 1_000
    Process.exit(conn, :kill)
    assert_receive {:connected, new_conn}, 2_000
    assert new_conn != conn
    assert Connection.connected?(:dying_connection)
  end
end
