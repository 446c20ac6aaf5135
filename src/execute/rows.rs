//! An item's requests, rendered when they are sent: a run keeps no rendered request in memory,
//! only where each item's row is (`PlannedItem::offset`). `FromRows` reads the row again from
//! the very file the batch was validated from, checks that it still holds the item as it was
//! validated (its content digest), and renders it as planning did. A row that changed, or is
//! gone, stops the run before anything of it is sent (`RunError::Source`).

use super::graph::{Planned, Render};
use super::runner::PlannedItem;
use crate::compile::Flow;
use crate::validate::ItemRow;
use crate::validate::source::Rows;

pub struct FromRows<'a> {
    pub flow: &'a Flow,
    pub rows: Rows,
    /// The item source as the operator names it (the manifest's `items.source`).
    pub display: String,
}

impl<'a> FromRows<'a> {
    pub fn new(flow: &'a Flow, rows: Rows, display: impl Into<String>) -> FromRows<'a> {
        FromRows {
            flow,
            rows,
            display: display.into(),
        }
    }
}

impl Render for FromRows<'_> {
    fn planned(&self, it: &PlannedItem) -> Result<Planned, String> {
        let values = self.rows.values(it.index, it.offset).map_err(|e| {
            format!(
                "cannot read item {} again from {} (line {}): {e}; nothing more was sent",
                it.id, self.display, it.line
            )
        })?;
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        if it.digest != crate::plan::content_digest(self.flow, &values) {
            return Err(format!(
                "line {} of {} no longer holds item {} as it was validated when this run started (the file changed while the batch ran); nothing more was sent",
                it.line, self.display, it.id
            ));
        }
        let row = ItemRow {
            index: it.index,
            line: it.line,
            offset: it.offset,
            id: &it.id,
            values: &values,
            valid: true,
        };
        let key = it.key.text();
        Ok(Planned {
            payload: crate::providers::render(self.flow, &row, &key),
            steps: crate::providers::render_steps(self.flow, &row, &key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{ItemRow, Visitor};

    const MANIFEST: &str = r#"batch: rows-test
provider: paysend
environment: sandbox
credentials: {partner_id: P, inbound_key: I, outbound_key: O}
items:
  source: e.csv
flow:
  - op: pay.toAccount
    payload:
      transferAmount: ${item.amount}
      transferCurrency: ${item.currency}
      purposeOfPayment: Salary
      from:
        sender: {type: LegalEntity, name: ACME, address: {addressLine1: Main 1, city: Berlin, country: DE}}
        sourceTransactionInstrument: {identifierType: PrepaidAccount, accountIdentifier: 52eab379-0bfe-4e04-9285-75fff9085765, currency: EUR}
      to:
        destinationTransactionInstrument: {identifierType: IBAN, accountIdentifier: "${item.iban}", bic: COBADEFFXXX, country: DE, currency: "${item.currency}"}
        recipient: {type: Individual, firstName: "${item.name}", lastName: Muller, address: {addressLine1: Main 2, city: Berlin, country: DE}}
"#;

    struct Plan<'f>(&'f Flow);

    impl Visitor for Plan<'_> {
        type Chunk = Vec<(PlannedItem, Vec<String>)>;
        fn item(&self, item: &ItemRow, chunk: &mut Self::Chunk) {
            let key = crate::keys::item_key("rows-test", item.id);
            let rendered = crate::providers::render(self.0, item, &key);
            chunk.push((
                PlannedItem {
                    id: item.id.into(),
                    digest: crate::plan::content_digest(self.0, item.values).into(),
                    line: item.line,
                    index: item.index,
                    offset: item.offset,
                    money: Default::default(),
                    key: key.into(),
                },
                rendered.iter().map(|r| r.get().to_string()).collect(),
            ));
        }
    }

    /// The batch's items as planned, each with its request rendered at planning, and the
    /// renderer a run uses.
    fn planned(dir: &std::path::Path, csv: &str) -> (Flow, Vec<(PlannedItem, Vec<String>)>, Rows) {
        std::fs::write(dir.join("e.csv"), csv).unwrap();
        std::fs::write(dir.join("m.yaml"), MANIFEST).unwrap();
        let p = crate::pipeline::prepare(&dir.join("m.yaml"), &crate::schema::Registry::Embedded)
            .map_err(|f| f.diagnostics)
            .unwrap();
        let mut source = p.source;
        let rows = Rows::of(&mut source, &p.flow.row_fields).unwrap();
        let mut items = Vec::new();
        crate::validate::validate(&p.flow, &mut source, 10, &Plan(&p.flow), |c| {
            items.extend(c)
        })
        .unwrap();
        (p.flow, items, rows)
    }

    const CSV: &str = "id,name,iban,amount,currency\r\nE1,\"Doe, Jane\",DE89370400440532013000,10.00,EUR\r\nE2,Bo,DE44500105175407324931,11.00,EUR\r\n";

    #[test]
    fn a_request_rendered_when_sent_is_the_request_planning_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let (flow, items, rows) = planned(dir.path(), CSV);
        let render = FromRows::new(&flow, rows, "e.csv");
        assert_eq!(items.len(), 2);
        for (it, at_planning) in &items {
            let now: Vec<String> = render
                .planned(it)
                .unwrap()
                .payload
                .iter()
                .map(|r| r.get().to_string())
                .collect();
            assert_eq!(&now, at_planning, "item {}", it.id);
        }
    }

    #[test]
    fn a_row_changed_while_the_batch_runs_is_not_rendered_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let (flow, items, rows) = planned(dir.path(), CSV);
        let render = FromRows::new(&flow, rows, "e.csv");
        // The same length, another amount: only the digest can tell.
        std::fs::write(dir.path().join("e.csv"), CSV.replace("11.00", "91.00")).unwrap();
        assert!(render.planned(&items[0].0).is_ok(), "E1 did not change");
        let why = render.planned(&items[1].0).err().unwrap();
        assert!(
            why.contains("line 3 of e.csv no longer holds item E2"),
            "{why}"
        );
        // Cut short: the row is gone.
        std::fs::write(dir.path().join("e.csv"), &CSV[..40]).unwrap();
        let why = render.planned(&items[1].0).err().unwrap();
        assert!(
            why.contains("cannot read item E2 again from e.csv (line 3)"),
            "{why}"
        );
    }
}
