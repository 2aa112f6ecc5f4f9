// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title ReentrantReceiver: test-only attacker. It acts as a node, submitter or claimant via
/// `execute`, and when it next receives ether it calls `target` again with `reentryData`,
/// recording whether that nested call succeeded and what it returned. It never reverts in
/// `receive`, so the outer call's success shows the contract itself held up.
contract ReentrantReceiver {
    address public immutable owner;
    address public target;
    bytes public reentryData;
    bool public armed;
    uint256 public reentryAttempts;
    bool public lastReentrySucceeded;
    bytes public lastReentryResult;

    error NotOwner();

    constructor() {
        owner = msg.sender;
    }

    function execute(address to, uint256 value, bytes calldata data) external payable returns (bytes memory) {
        if (msg.sender != owner) revert NotOwner();
        (bool ok, bytes memory ret) = to.call{value: value}(data);
        if (!ok) {
            assembly {
                revert(add(ret, 32), mload(ret))
            }
        }
        return ret;
    }

    function arm(address target_, bytes calldata data) external {
        if (msg.sender != owner) revert NotOwner();
        target = target_;
        reentryData = data;
        armed = true;
    }

    receive() external payable {
        if (!armed) return;
        armed = false;
        reentryAttempts += 1;
        (bool ok, bytes memory ret) = target.call(reentryData);
        lastReentrySucceeded = ok;
        lastReentryResult = ret;
    }
}
