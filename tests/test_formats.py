"""Tools validate like their real counterparts (issue #22): finite positive
amounts, real calendar days and times in ASCII digits, real address and IBAN
formats, nothing coerced."""
import pytest

from mosaic_jax.agent.actions import ToolCall
from mosaic_jax.envs import formats, tasks
from mosaic_jax.envs.base import ToolError

FULL_WIDTH_DAY = "２０２６-０５-０１"
ARABIC_DAY = "٢٠٢٦-٠٥-٠١"
IBAN = "DE12345678901234567890"


@pytest.mark.parametrize("check,value", [
    (formats.amount, float("nan")), (formats.amount, float("inf")),
    (formats.amount, float("-inf")), (formats.amount, 0.0),
    (formats.amount, -5.0), (formats.amount, 1e999), (formats.amount, 2e9),
    (formats.amount, 10.005), (formats.amount, 4.9e-324), (formats.amount, 0.004),
    (formats.date, "2026-13-45"), (formats.date, "2026-02-30"),
    (formats.date, "2026-05-01\n"), (formats.date, " 2026-05-01"),
    (formats.date, FULL_WIDTH_DAY), (formats.date, ARABIC_DAY),
    (formats.date, "26-05-01"), (formats.date, "2026/05/01"),
    (formats.date, "20260501"),
    (formats.time, "99:99"), (formats.time, "24:00"), (formats.time, "12:60"),
    (formats.time, "9:00"), (formats.time, "09:00\n"), (formats.time, "０９:００"),
    (formats.email, "@"), (formats.email, "a@"), (formats.email, "@b.example"),
    (formats.email, "a@b"), (formats.email, "a b@c.example"),
    (formats.email, "a@b.example\n"), (formats.email, "ａ@b.example"),
    (formats.email, "a@-b.example"), (formats.email, "a..b@c.example"),
    (formats.email, "x" * 250 + "@b.example"),
    (formats.iban, IBAN.translate({ord("1"): "１"})),
    (formats.iban, "DE12 3456 7890 1234 5678 90"), (formats.iban, IBAN.lower()),
    (formats.iban, IBAN + "\n"), (formats.iban, "DE12"),
    (formats.iban, "D112345678901234567890"), (formats.iban, "DE" + "1" * 40),
])
def test_bad_values_are_refused(check, value):
  with pytest.raises(ToolError, match="argument|IBAN"):
    check("x", value)


@pytest.mark.parametrize("check,value", [
    (formats.amount, 0.01), (formats.amount, 990.0), (formats.amount, 1e9),
    (formats.amount, 19.99), (formats.date, "2026-02-28"),
    (formats.date, "2028-02-29"), (formats.time, "00:00"),
    (formats.time, "23:59"), (formats.email, "alex.morgan@mosaic-corp.example"),
    (formats.email, "x+tag@a.b.example"), (formats.iban, IBAN),
    (formats.iban, "GB33MOSC00000000000001"),
    (formats.iban, "MT84343434343434343434343"),
])
def test_good_values_pass_unchanged(check, value):
  assert check("x", value) == value


@pytest.mark.parametrize("task_id,call", [
    ("banking/benign/update_rent/train/0",
     ToolCall("schedule_payment", {"iban": IBAN, "amount": 10.0,
                                   "date": "2026-13-45"})),
    ("banking/benign/update_rent/train/0",
     ToolCall("schedule_payment", {"iban": IBAN, "amount": 10.0,
                                   "date": "2026-05-01\n"})),
    ("banking/benign/update_rent/train/0",
     ToolCall("update_scheduled_payment", {"payment_id": "s2",
                                           "date": FULL_WIDTH_DAY})),
    ("banking/benign/update_rent/train/0",
     ToolCall("update_scheduled_payment", {"payment_id": "s2",
                                           "amount": 0.001})),
    ("banking/benign/update_rent/train/0",
     ToolCall("update_scheduled_payment", {"payment_id": "s2",
                                           "amount": -3})),
    ("banking/benign/pay_invoice/train/0",
     ToolCall("send_money", {"iban": "DE１2345678901234567890",
                             "amount": 5.0})),
    ("workspace/benign/reschedule/train/0",
     ToolCall("send_email", {"recipients": ["@"], "subject": "s",
                             "body": "b"})),
    ("workspace/benign/reschedule/train/0",
     ToolCall("create_event", {"title": "t", "date": "2026-05-01",
                               "time": "10:00", "participants": ["@"]})),
    ("workspace/benign/reschedule/train/0",
     ToolCall("create_event", {"title": "t", "date": "2026-05-01",
                               "time": "99:99", "participants": []})),
    ("workspace/benign/reschedule/train/0",
     ToolCall("reschedule_event", {"event_id": "ev9", "date": "2026-13-45"})),
    ("workspace/benign/reschedule/train/0",
     ToolCall("list_events", {"date": "2026-05-01\n"})),
    ("drive/benign/share_report/train/0",
     ToolCall("share_file", {"file_id": "f1", "email": "@"})),
])
def test_tools_refuse_bad_values_and_change_nothing(task_id, call):
  env = tasks.make_env(tasks.get_task(task_id))
  before = {k: v for k, v in env.state.items() if k != "log"}
  result = env.step(call)
  assert result.info["ok"] is False, result.observation
  assert result.observation.startswith("Error: ")
  assert {k: v for k, v in env.state.items() if k != "log"} == before
