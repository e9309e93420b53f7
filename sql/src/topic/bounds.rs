//! Filter analysis: which pushed-down filters on `partition`, `offset` and `timestamp` a scan
//! serves exactly, folded into inclusive [`Bounds`].

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use weir_storage::Record;

/// What the pushed-down filters allow; every bound is inclusive.
#[derive(Clone, Debug)]
pub(super) struct Bounds {
    pub(super) partitions: Option<BTreeSet<i64>>,
    pub(super) offset: (i64, i64),
    pub(super) timestamp_ms: (i64, i64),
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            partitions: None,
            offset: (i64::MIN, i64::MAX),
            timestamp_ms: (i64::MIN, i64::MAX),
        }
    }
}

impl Bounds {
    pub(super) fn keeps(&self, partition: i64, r: &Record) -> bool {
        self.partitions
            .as_ref()
            .is_none_or(|set| set.contains(&partition))
            && (self.offset.0..=self.offset.1).contains(&r.offset)
            && self.keeps_timestamp(r.timestamp)
    }

    /// Whether the timestamp bounds keep a record of `timestamp` milliseconds.
    pub(super) fn keeps_timestamp(&self, timestamp: i64) -> bool {
        (self.timestamp_ms.0..=self.timestamp_ms.1).contains(&timestamp)
    }

    /// Whether a filter bounds the timestamp at all.
    pub(super) fn bounds_time(&self) -> bool {
        self.timestamp_ms != (i64::MIN, i64::MAX)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bounded {
    Partition,
    Offset,
    Timestamp,
}

/// The column a filter side names, looking through casts (DataFusion casts `timestamp` to the
/// unit of the literal it is compared with).
fn bounded_column(expr: &Expr) -> Option<Bounded> {
    match expr {
        Expr::Column(c) => match c.name.as_str() {
            "partition" => Some(Bounded::Partition),
            "offset" => Some(Bounded::Offset),
            "timestamp" => Some(Bounded::Timestamp),
            _ => None,
        },
        Expr::Cast(cast)
            if matches!(
                cast.field.data_type(),
                DataType::Timestamp(..) | DataType::Int64 | DataType::Int32
            ) =>
        {
            bounded_column(&cast.expr).filter(|b| {
                *b != Bounded::Timestamp
                    || matches!(cast.field.data_type(), DataType::Timestamp(..))
            })
        }
        _ => None,
    }
}

/// A literal as (value, units per millisecond as a divisor, or milliseconds per unit as a
/// multiplier): integers are plain, timestamps carry their unit.
fn literal(expr: &Expr, column: Bounded) -> Option<(i64, i64, i64)> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let timestamp = column == Bounded::Timestamp;
    let integer = |v: i64| (!timestamp).then_some((v, 1, 1));
    match value {
        ScalarValue::Int8(Some(v)) => integer(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => integer(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => integer(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => integer(*v),
        ScalarValue::UInt8(Some(v)) => integer(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => integer(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => integer(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => integer(i64::try_from(*v).ok()?),
        ScalarValue::TimestampSecond(Some(v), _) if timestamp => Some((*v, 1, 1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) if timestamp => Some((*v, 1, 1)),
        ScalarValue::TimestampMicrosecond(Some(v), _) if timestamp => Some((*v, 1000, 1)),
        ScalarValue::TimestampNanosecond(Some(v), _) if timestamp => Some((*v, 1_000_000, 1)),
        _ => None,
    }
}

fn flip(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq => Operator::Eq,
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}

/// Narrows `bounds` by `column op literal`; false when the form is not one this scan serves.
fn apply_comparison(
    bounds: &mut Bounds,
    column: Bounded,
    op: Operator,
    (value, divisor, multiplier): (i64, i64, i64),
) -> bool {
    // Inclusive bounds in the column's unit (milliseconds for timestamps).
    let floor = value.saturating_mul(multiplier).div_euclid(divisor);
    let ceil = if value.saturating_mul(multiplier).rem_euclid(divisor) == 0 {
        floor
    } else {
        floor.saturating_add(1)
    };
    let (low, high) = match op {
        Operator::Eq => (ceil, floor),
        Operator::Gt => (floor.saturating_add(1), i64::MAX),
        Operator::GtEq => (ceil, i64::MAX),
        Operator::Lt => (i64::MIN, ceil.saturating_sub(1)),
        Operator::LtEq => (i64::MIN, floor),
        _ => return false,
    };
    let range = match column {
        Bounded::Offset => &mut bounds.offset,
        Bounded::Timestamp => &mut bounds.timestamp_ms,
        Bounded::Partition => {
            if op != Operator::Eq {
                return false;
            }
            let set = BTreeSet::from([value]);
            bounds.partitions = Some(match bounds.partitions.take() {
                Some(known) => known.intersection(&set).copied().collect(),
                None => set,
            });
            return true;
        }
    };
    *range = (range.0.max(low), range.1.min(high));
    true
}

/// Folds `filter` into `bounds` when it is a form the scan serves exactly.
pub(super) fn analyze(filter: &Expr, bounds: &mut Bounds) -> bool {
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            // Both sides must be served for the conjunction to be exact; try on a copy.
            let mut narrowed = bounds.clone();
            let served = analyze(left, &mut narrowed) && analyze(right, &mut narrowed);
            if served {
                *bounds = narrowed;
            }
            served
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, op, value) = match (bounded_column(left), bounded_column(right)) {
                (Some(column), None) => (column, *op, literal(right, column)),
                (None, Some(column)) => match flip(*op) {
                    Some(op) => (column, op, literal(left, column)),
                    None => return false,
                },
                _ => return false,
            };
            value.is_some_and(|value| apply_comparison(bounds, column, op, value))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let Some(column) = bounded_column(expr) else {
                return false;
            };
            let (Some(low), Some(high)) = (literal(low, column), literal(high, column)) else {
                return false;
            };
            let mut narrowed = bounds.clone();
            let served = apply_comparison(&mut narrowed, column, Operator::GtEq, low)
                && apply_comparison(&mut narrowed, column, Operator::LtEq, high);
            if served {
                *bounds = narrowed;
            }
            served
        }
        Expr::InList(list)
            if !list.negated && bounded_column(&list.expr) == Some(Bounded::Partition) =>
        {
            let values: Option<BTreeSet<i64>> = list
                .list
                .iter()
                .map(|e| literal(e, Bounded::Partition).map(|(v, _, _)| v))
                .collect();
            let Some(values) = values else { return false };
            bounds.partitions = Some(match bounds.partitions.take() {
                Some(known) => known.intersection(&values).copied().collect(),
                None => values,
            });
            true
        }
        _ => false,
    }
}
