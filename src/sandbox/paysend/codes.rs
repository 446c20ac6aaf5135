//! Paysend's processing error codes and their texts, as the document's table gives them
//! (docs/paysend-wire.md §4), and the Sandbox Mock Service's trigger values per function (§5).

/// The `comment` Paysend returns with an error code.
pub fn comment(code: u32) -> &'static str {
    match code {
        1000 => "Processing error occurred.",
        2000 => "Validation error.",
        3000 => "Failed to save card.",
        3001 => "Tokenised card not found. Please try again with the corrected card token.",
        3002 => "Unable to decrypt tokenised card. Please try again with the corrected card token.",
        3003 => "Single transaction limit reached.",
        3004 => "Aggregate transaction limit reached.",
        3005 => "Processing error occurred.",
        3006 => "Unable to find requested data. Please check the request parameters and try again.",
        3007 => "Failed to get saved card by token. Please try again later or use other card.",
        3008 => "Wrong Source Transaction Instrument provided (no such account Id)",
        3009 => "Insufficient Balance",
        3010 => "Bank with this UUID has been deleted. Please update bank data.",
        3011 => "Payment with this invoiceId already exists.",
        3012 => {
            "Declined for compliance or fraud reasons. Please contact customer support for additional information."
        }
        4000 => "Generic decline. Try again and refer to card issuer if issue persists.",
        4002 => "The issuer is temporarily unavailable or has a system issue.",
        4003 => {
            "Approval amount or frequency limit exceeded. Try again later, send a smaller amount or use another card or account."
        }
        4004 => "Insufficient funds in the recipient account. Please use a different card.",
        4005 => "Issues with the card information or transaction data.",
        4006 => {
            "Declined due to account restrictions or bank policies. Recipient needs to contact the receiving bank."
        }
        4007 => {
            "Declined for security or regulatory reasons. Recipient needs to contact the receiving bank."
        }
        4008 => "Account owner refused incoming money transfer. Please contact the account owner.",
        4009 => "Issues with the account information or transaction data: sandbox simulated error.",
        4010 => "Transaction cancelled.",
        4011 => "Invalid recipient currency",
        4012 => "Transaction amount is greater than maximum allowed for transaction",
        4013 => "Incorrect IFSC or BIC code",
        4014 => "Sender address is incorrect or invalid",
        4015 => "Incorrect branch name or code",
        4016 => "Recipient name does not match the account",
        4017 => "Invalid Recipient bank account number",
        4018 => "IBAN provided is invalid",
        9999 => "Unknown error. Please contact customer support.",
        _ => "Processing error occurred.",
    }
}

/// The mock's trigger field and the error codes it simulates, per function (L240-250, the
/// "Possible values" lists L283-523). pay.toCard also takes 3002, the document's own worked
/// example (L254-261), though its list omits it.
pub fn triggers(function: &str) -> Option<(&'static str, &'static [u32])> {
    match function {
        "pay.toAccount" => Some((
            "transferAmount",
            &[
                1000, 2000, 3008, 4003, 4006, 4007, 4008, 4009, 4010, 4011, 4012, 4013, 4014, 4015,
                4016, 4017, 4018, 9999,
            ],
        )),
        "pay.toCard" => Some((
            "to.amount",
            &[
                1000, 2000, 3002, 3008, 4000, 4002, 4003, 4004, 4005, 4006, 4007, 9999,
            ],
        )),
        "fx.rateGet" => Some(("amountIn", &[1000, 3005])),
        "fx.rateGet.p2a" => Some(("payoutAmount", &[1000, 3005])),
        "getBalance" => Some(("currency", &[1000])),
        "partner.statementGet" => Some(("currency", &[3006])),
        _ => None,
    }
}

/// task.statusGet identifiers of the mock: the fourth group of the UUID is the error code
/// returned (L535-561).
pub const MOCK_IDENTIFIERS: &[&str] = &[
    "b21608ea-181d-4d06-3005-50baf7ef4ea3",
    "9c003618-970d-4ee6-3006-b194c4240207",
    "3720f209-2f47-4fcc-4003-1526826f97c9",
    "28d5cc5a-59f2-4a69-4006-eb51119733b7",
    "6f09bfbd-2787-4be1-4007-736ca9ab3ee0",
    "643134f9-fa3c-421c-4008-9f1da1331e46",
    "0867b07e-27f2-4f33-4009-ac71951c8a86",
    "85acf094-d145-48fd-4010-615ee9382de0",
    "a7ca33f8-f84f-4dd6-4011-62ca412940ef",
    "94168944-8a7e-4428-4012-960c63049b0f",
    "da49f241-f398-414f-4013-e8b0de0411ef",
    "561e85a1-7339-45b0-4014-318f255aa907",
    "59a33eeb-524e-4646-4015-adcdafc900f3",
    "eeb2110b-6e42-48d5-4016-f479622ed79f",
    "1cf50496-bb28-475a-4017-2ad35fa61f17",
    "9f487aed-631a-4646-4018-07dcd592998a",
    "a4589f49-2df2-4081-4000-a0cdca07fdd9",
    "2f0e617a-e683-4d80-4002-2d31e3f8d7b8",
    "fd0abd9b-42bb-4553-4003-60b65fcdecd0",
    "ef952a9e-c2aa-44ec-4004-8e94069ced00",
    "dd05ca6d-caca-4d73-4005-035f91e4c2b2",
    "0f3774d9-2b21-43b1-4006-714b91bad366",
    "61578af5-640d-476b-4007-2114eadb8880",
];

/// The error code a mock identifier or `INV-…` invoice id stands for.
pub fn mock_status_code(identifier: Option<&str>, invoice_id: Option<&str>) -> Option<u32> {
    if let Some(id) = identifier
        && MOCK_IDENTIFIERS.contains(&id)
    {
        return id.split('-').nth(3).and_then(|g| g.parse().ok());
    }
    let inv = invoice_id?;
    let code = inv
        .strip_prefix("INV-P2A-")
        .or_else(|| inv.strip_prefix("INV-P2C-"))
        .or_else(|| inv.strip_prefix("INV-"))?;
    let code: u32 = code.parse().ok()?;
    let known = match inv {
        i if i.starts_with("INV-P2A-") => code == 4003 || (4006..=4018).contains(&code),
        i if i.starts_with("INV-P2C-") => matches!(code, 4000 | 4002..=4007),
        _ => matches!(code, 3005 | 3006),
    };
    known.then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_identifiers_and_invoice_ids_carry_their_error_code() {
        assert_eq!(
            mock_status_code(Some("3720f209-2f47-4fcc-4003-1526826f97c9"), None),
            Some(4003)
        );
        assert_eq!(mock_status_code(None, Some("INV-P2A-4018")), Some(4018));
        assert_eq!(mock_status_code(None, Some("INV-P2C-4005")), Some(4005));
        assert_eq!(mock_status_code(None, Some("INV-3006")), Some(3006));
        assert_eq!(
            mock_status_code(None, Some("INV-P2C-4008")),
            None,
            "not in the pay.toCard list"
        );
        assert_eq!(
            mock_status_code(Some("3720f209-2f47-4fcc-4003-000000000000"), None),
            None
        );
    }
}
